"""Backbone families: how each kind of pretrained transformer is built from
its checkpoint so that it computes what the checkpoint was trained to compute."""

from keras_adapters.backbones.bert import BertBackbone

__all__ = ["BertBackbone"]
