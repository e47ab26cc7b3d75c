"""Llama-family decoders (Llama 2/3, SmolLM2, ...) from Hugging Face folders.

keras-hub's `Llama3Backbone` computes these models; its Hugging Face loader
leaves the RMS-norm epsilon at its default (1e-6), so the checkpoint's own
`rms_norm_eps` is passed here (SmolLM2's is 1e-5). A `.gguf` file becomes
such a folder first (`keras_adapters.io.gguf_checkpoint`).

Rotary position embeddings make attention depend on distances only, so rows
padded on the left decode as they are (`keras_adapters.models.decoding`);
only a prefix's cached keys, which carry no rotation, are turned by each
row's padding (`rotate_past`).
"""

import json
import os

import tensorflow as tf

from keras_adapters.backbones.byte_pair import fix_special_token_stand_ins
from keras_adapters.backbones.decoder import cached_forward
from keras_adapters.backbones.family import Family
from keras_adapters.backbones.family import register_family
from keras_adapters.backbones.huggingface import model_type
from keras_adapters.backbones.huggingface import tokenizer_json

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
#: Hugging Face `LlamaDecoderLayer` module -> site (peft folders name these).
HUGGINGFACE_SITES = {
    "self_attn.q_proj": "query",
    "self_attn.k_proj": "key",
    "self_attn.v_proj": "value",
    "self_attn.o_proj": "attention_output",
    "mlp.gate_proj": "feedforward_gate_dense",
    "mlp.up_proj": "feedforward_intermediate_dense",
    "mlp.down_proj": "feedforward_output_dense",
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


def cache_shape(backbone):
    """(layers, kv heads, head_dim) of the decoder's KV cache (grouped-query attention)."""
    head_dim = int(backbone.hidden_dim) // int(backbone.num_query_heads)
    return int(backbone.num_layers), int(backbone.num_key_value_heads), head_dim


def rotate_past(language_model, past, offsets):
    """A prefix's keys and values (`[batch, layers, 2, length, kv heads,
    head_dim]`) for rows whose tokens sit `offsets` cache columns after
    their positions (left padding): keys rotated by each row's offset, so
    that a token meets them at the distance it has without padding (peft's
    prefix keys carry no rotation; the tokens after them start at position
    `length`)."""
    attention = getattr(language_model.backbone.transformer_layers[0], SITES["query"][0])  # by the site path
    rotary = attention.rotary_embedding_layer
    shape = tf.shape(past)
    keys = tf.reshape(past[:, :, 0], tf.stack([shape[0], shape[1] * shape[3], shape[4], shape[5]]))
    positions = tf.broadcast_to(tf.cast(offsets, tf.float32)[:, None], tf.shape(keys)[:2])
    keys = tf.reshape(rotary(keys, positions=positions), tf.shape(past[:, :, 0]))
    return tf.stack([keys, past[:, :, 1]], axis=2)


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


def _byte_level(settings):
    """Whether a tokenizer.json splits text as byte-level BPE does (GPT-2, Llama 3, SmolLM2)."""
    text = json.dumps({k: settings.get(k) for k in ("pre_tokenizer", "decoder")})
    return '"ByteLevel"' in text


def tokenizer(folder):
    """keras-hub's `Llama3Tokenizer` (byte-level BPE) for the checkpoint in `folder`.

    Raises:
        ValueError: the checkpoint's tokenizer is not byte-level BPE (Llama 2
            and TinyLlama use SentencePiece's, which this tokenizer would read wrongly).
    """
    from keras_hub.src.models.llama3.llama3_tokenizer import Llama3Tokenizer
    from keras_hub.src.utils.preset_utils import get_preset_loader

    if not _byte_level(tokenizer_json(folder)):
        raise ValueError(
            f"{folder}: tokenizer.json is not a byte-level BPE tokenizer (Llama 3, SmolLM2); SentencePiece-style "
            "Llama tokenizers (Llama 2, TinyLlama) are not supported yet."
        )
    fix_special_token_stand_ins()
    return get_preset_loader(folder).load_tokenizer(Llama3Tokenizer)


FAMILY = register_family(
    Family("llama", _layer_types, SITES, ALIASES, input_end=True, input_layers=("token_embedding", "transformer_layers"),
           prompt_placements=("before_cls",), huggingface_layers=r"model\.layers", huggingface_layer_name="model.layers",
           huggingface_sites=HUGGINGFACE_SITES, language_model=language_model, cached_forward=cached_forward,
           rotate_past=rotate_past, cache_shape=cache_shape, model_types=("llama",), tokenizer=tokenizer)
)
