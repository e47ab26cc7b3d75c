"""BERT-family encoders, built with the activation their checkpoint was trained with.

keras-hub's `BertBackbone` always computes the feed-forward GELU with the tanh
approximation, while BERT checkpoints (MiniLM included) were trained with the
exact erf GELU, as Hugging Face's `"gelu"` computes it. The gap moves a
MiniLM adapter's class probabilities by up to ~1e-3, enough that an adapter
trained in PyTorch would not reproduce its outputs here. `BertBackbone` below
is keras-hub's, with the activation as one more (serialized) argument, read
from the checkpoint's `config.json` (`hidden_act`) when loaded from a Hugging
Face folder.
"""

import json
import os

import keras
import keras_hub
from keras_hub.src.utils.keras_utils import gelu_approximate  # keras-hub's own (serializable)

from keras_adapters.backbones.activations import gelu
from keras_adapters.backbones.family import TRANSFORMER_LAYER_SITES
from keras_adapters.backbones.family import Family
from keras_adapters.backbones.family import register_family
from keras_adapters.backbones.huggingface import model_type

#: Activation name (as saved in our config) -> function.
ACTIVATIONS = {
    "gelu": gelu,  # exact; keras.activations.gelu's values, a cheaper gradient
    "gelu_approximate": gelu_approximate,
    "relu": keras.activations.relu,
    "silu": keras.activations.silu,
}
#: Hugging Face's `hidden_act` names -> ours (transformers' ACT2FN).
HUGGINGFACE_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_python": "gelu",
    "gelu_new": "gelu_approximate",
    "gelu_pytorch_tanh": "gelu_approximate",
    "gelu_fast": "gelu_approximate",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def _checked(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Unknown BERT feed-forward activation {activation!r}: use one of {sorted(ACTIVATIONS)} "
            "(the checkpoint's own; 'gelu' is the exact erf form, 'gelu_approximate' the tanh one)."
        )
    return activation


@keras.saving.register_keras_serializable(package="keras_adapters")
class BertBackbone(keras_hub.models.BertBackbone):
    """keras-hub's BERT encoder with a chosen feed-forward activation.

    Args:
        activation: `"gelu"` (exact, what BERT checkpoints were trained
            with), `"gelu_approximate"` (keras-hub's default: tanh
            approximation), `"relu"` or `"silu"`.
        **kwargs: `keras_hub.models.BertBackbone` arguments.

    Example:
    ```python
    backbone = BertBackbone.from_huggingface("path/to/bert_folder")  # reads hidden_act
    backbone = BertBackbone(vocabulary_size=100, num_layers=2, num_heads=2,
                            hidden_dim=8, intermediate_dim=16, activation="gelu")
    ```
    """

    def __init__(self, *, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        self.activation = _checked(activation)
        function = ACTIVATIONS[activation]
        for layer in self.transformer_layers:
            # The functional graph calls each Dense at run time, so the
            # activation it holds is the one computed (also by adapter sites,
            # which read `layer.activation`, and by the served graph).
            layer._feedforward_intermediate_dense.activation = function
            layer.activation = function

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}

    @classmethod
    def from_huggingface(cls, folder, load_weights=True, activation=None, **kwargs):
        """The checkpoint in a Hugging Face BERT folder, with its `hidden_act`
        (or `activation`, to rebuild a backbone as an adapter recorded it).

        Raises:
            ValueError: the folder's `hidden_act` is not one BERT layers here compute.
        """
        from keras_hub.src.utils.preset_utils import get_preset_loader

        with open(os.path.join(folder, "config.json")) as f:
            hidden_act = json.load(f).get("hidden_act", "gelu")
        if hidden_act not in HUGGINGFACE_ACTIVATIONS:
            raise ValueError(
                f"{folder}: config.json's hidden_act {hidden_act!r} is not supported here; "
                f"supported: {sorted(HUGGINGFACE_ACTIVATIONS)}."
            )
        # keras-hub's loader converts the weights into whichever class it is
        # given; its public `from_preset` would always build its own class.
        loader = get_preset_loader(folder)
        activation = _checked(activation or HUGGINGFACE_ACTIVATIONS[hidden_act])
        return loader.load_backbone(cls, load_weights, activation=activation, **kwargs)


#: What BERT backbones computed before `activation` was recorded (keras-adapters
#: < 0.18 built keras-hub's own BertBackbone, which always uses it).
LEGACY_ACTIVATION = "gelu_approximate"


def recorded_activation(architecture):
    """The activation an adapter folder's `backbone.architecture` says its BERT
    computed; `None` for other backbones."""
    if (architecture or {}).get("class_name") != "BertBackbone":
        return None
    return architecture.get("activation", LEGACY_ACTIVATION)


def with_activation(architecture):
    """`architecture` with the activation it computed spelled out (older records lack it)."""
    activation = recorded_activation(architecture)
    return architecture if activation is None else {**architecture, "activation": activation}


def is_huggingface_bert(folder):
    """Whether `folder` holds a Hugging Face BERT checkpoint (`model_type: bert`)."""
    return model_type(folder) == "bert"


# keras-hub finds a preset's tokenizer and preprocessor by the class of its
# backbone: these make a preset folder saved from `BertBackbone` load them.
@keras.saving.register_keras_serializable(package="keras_adapters")
class BertTokenizer(keras_hub.models.BertTokenizer):
    """keras-hub's BERT tokenizer, for presets saved from `BertBackbone`."""

    backbone_cls = BertBackbone


@keras.saving.register_keras_serializable(package="keras_adapters")
class BertTextClassifierPreprocessor(keras_hub.models.BertTextClassifierPreprocessor):
    """keras-hub's BERT classifier preprocessor, for presets saved from `BertBackbone`."""

    backbone_cls = BertBackbone
    tokenizer_cls = BertTokenizer


#: Site name -> attribute path from a keras-hub `TransformerEncoder` (see `backbones.family`);
#: `self_attention` is the attention layer itself (prefix tuning's place on encoders).
SITES = {"self_attention": ("_self_attention_layer",), **TRANSFORMER_LAYER_SITES}


def _layer_types():
    from keras_hub.layers import TransformerEncoder

    return (TransformerEncoder,)


#: A Hugging Face BERT layer's module names -> our site names (`SITES`).
HUGGINGFACE_SITES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention_output",
    "intermediate.dense": "feedforward_intermediate_dense",
    "output.dense": "feedforward_output_dense",
}
#: Sites that live inside the self-attention layer (their weights' keys say so).
ATTENTION_SITES = ("query", "key", "value", "attention_output")


def encoder_name(index):
    """keras-hub's name of encoder layer `index` (Hugging Face's `encoder.layer.<index>`)."""
    return f"transformer_layer_{index}"


def unit_key(index, site, weight):
    """The adapter-folder key of a unit's weight at `site` of encoder layer `index`
    (`transformer_layer_0/self_attention_layer/query/lora_a`; a dropout site's
    units are `..._adapter`: `transformer_layer_0/feedforward_adapter/down/kernel`)."""
    scope = encoder_name(index) + ("/self_attention_layer" if site in ATTENTION_SITES else "")
    label = site.replace("dropout", "adapter") if site.endswith("_dropout") else site
    return f"{scope}/{label}/{weight}"


#: What prompt tuning runs of a BERT-style backbone (`keras_adapters.methods.prompt`).
INPUT_LAYERS = ("token_embedding", "position_embedding", "segment_embedding", "embeddings_add",
                "embeddings_layer_norm", "embeddings_dropout", "transformer_layers", "pooled_dense")
FAMILY = register_family(Family("bert", _layer_types, SITES, post_norm=True, input_end=True, input_layers=INPUT_LAYERS,
                                huggingface_layers=r"(?:bert\.)?encoder\.layer",
                                huggingface_sites=HUGGINGFACE_SITES))
