"""Backbone families: how each kind of pretrained transformer is built from
its checkpoint so that it computes what the checkpoint was trained to compute."""

from keras_adapters.backbones.bert import BertBackbone
from keras_adapters.backbones import gemma3  # noqa: F401  (registers the Gemma 3 family)
from keras_adapters.backbones import gpt2  # noqa: F401  (registers the GPT-2 family)
from keras_adapters.backbones import llama  # noqa: F401  (registers the Llama family)

__all__ = ["BertBackbone"]
