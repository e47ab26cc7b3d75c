"""Llama-family decoders (Llama 2/3, SmolLM2, ...) from Hugging Face folders.

keras-hub's `Llama3Backbone` computes these models; its Hugging Face loader
leaves the RMS-norm epsilon at its default (1e-6), so the checkpoint's own
`rms_norm_eps` is passed here (SmolLM2's is 1e-5). A `.gguf` file becomes
such a folder first (`keras_adapters.io.gguf_checkpoint`).
"""

import json
import os

from keras_adapters.backbones.family import Family
from keras_adapters.backbones.family import register_family
from keras_adapters.backbones.huggingface import model_type

#: Site name -> attribute path from a keras-hub `LlamaTransformerDecoder`
#: (Llama3Backbone's layers too). The layer is pre-norm with a gated
#: feed-forward block: `down(silu(gate(x)) * up(x))`, keras-hub's
#: `feedforward_gate_dense` (gate), `feedforward_intermediate_dense` (up) and
#: `feedforward_output_dense` (down).
SITES = {
    "self_attention_dropout": ("_self_attention_dropout",),
    "query": ("_self_attention_layer", "_query_dense"),
    "key": ("_self_attention_layer", "_key_dense"),
    "value": ("_self_attention_layer", "_value_dense"),
    "attention_output": ("_self_attention_layer", "_output_dense"),
    "feedforward_gate_dense": ("_feedforward_gate_dense",),
    "feedforward_intermediate_dense": ("_feedforward_intermediate_dense",),
    "feedforward_output_dense": ("_feedforward_output_dense",),
    "self_attention_layer_norm": ("_self_attention_layernorm",),
    "feedforward_layer_norm": ("_feedforward_layernorm",),
    "attention_probabilities_dropout": ("_self_attention_layer", "_dropout_layer"),
}
#: No dropout follows the feed-forward block: what acts on its output (a
#: bottleneck adapter's place) acts on the output of its last projection.
ALIASES = {"feedforward_dropout": "feedforward_output_dense"}


def _layer_types():
    from keras_hub.src.models.llama.llama_decoder import LlamaTransformerDecoder

    return (LlamaTransformerDecoder,)


def language_model(backbone):
    """keras-hub's `Llama3CausalLM` over `backbone` (no preprocessor): logits
    tied to (or beside) the token embedding, generation with a KV cache."""
    from keras_hub.src.models.llama3.llama3_causal_lm import Llama3CausalLM

    return Llama3CausalLM(backbone, preprocessor=None)


FAMILY = register_family(Family("llama", _layer_types, SITES, ALIASES, language_model=language_model))


def is_huggingface_llama(folder):
    """Whether `folder` holds a Hugging Face Llama checkpoint (`model_type: llama`)."""
    return model_type(folder) == "llama"


def from_huggingface(folder, load_weights=True, **kwargs):
    """keras-hub's `Llama3Backbone` with the checkpoint in `folder` and its
    `rms_norm_eps`.

    Example:
    ```python
    backbone = from_huggingface("smollm2_folder")
    hidden = backbone({"token_ids": ids, "padding_mask": mask})
    logits = backbone.token_embedding(hidden, reverse=True)
    ```
    """
    from keras_hub.src.models.llama3.llama3_backbone import Llama3Backbone
    from keras_hub.src.utils.preset_utils import get_preset_loader

    with open(os.path.join(folder, "config.json")) as f:
        epsilon = json.load(f).get("rms_norm_eps", 1e-6)
    return get_preset_loader(folder).load_backbone(Llama3Backbone, load_weights, layer_norm_epsilon=epsilon, **kwargs)


def tokenizer(folder):
    """keras-hub's `Llama3Tokenizer` (byte-level BPE) for the checkpoint in `folder`."""
    from keras_hub.src.models.llama3.llama3_tokenizer import Llama3Tokenizer
    from keras_hub.src.utils.preset_utils import get_preset_loader

    return get_preset_loader(folder).load_tokenizer(Llama3Tokenizer)


def start_token_id(folder, tokenizer):
    """The id the checkpoint's tokenizer puts before every text, or None
    (`add_bos_token` of `tokenizer_config.json`; SmolLM2 adds none)."""
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        adds = json.load(f).get("add_bos_token", False)
    return tokenizer.start_token_id if adds else None
