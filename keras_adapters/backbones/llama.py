"""Llama-family decoders (Llama 2/3, SmolLM2, ...) from Hugging Face folders.

keras-hub's `Llama3Backbone` computes these models; its Hugging Face loader
leaves the RMS-norm epsilon at its default (1e-6), so the checkpoint's own
`rms_norm_eps` is passed here (SmolLM2's is 1e-5). A `.gguf` file becomes
such a folder first (`keras_adapters.io.gguf_checkpoint`).
"""

import json
import os

import tensorflow as tf

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


def cached_forward(language_model, x, cache, index, key_mask):
    """The decoder over embeddings `x` (columns `index`... of the rows),
    reading and writing the cache, keys masked by `key_mask` `[batch, cache
    length]`; with `cache=None`, over whole rows (`key_mask` their padding mask).

    Returns:
        (final hidden states, updated cache or `None`). Rotary position
        embeddings make attention depend on relative positions only, so rows
        may be padded on the left (`keras_adapters.models.decoding`).
    """
    backbone = language_model.backbone
    if cache is None:
        for layer in backbone.transformer_layers:
            x = layer(x, decoder_padding_mask=key_mask)
        return backbone.layer_norm(x), None
    shape = tf.stack([tf.shape(x)[0], tf.shape(x)[1], tf.shape(key_mask)[1]])
    mask = tf.broadcast_to(tf.cast(key_mask, "int32")[:, None, :], shape)
    caches = []
    for i, layer in enumerate(backbone.transformer_layers):
        x, layer_cache = layer(x, decoder_attention_mask=mask, self_attention_cache=cache[:, i, ...],
                               self_attention_cache_update_index=index)
        caches.append(layer_cache)
    return backbone.layer_norm(x), tf.stack(caches, axis=1)


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


FAMILY = register_family(
    Family("llama", _layer_types, SITES, ALIASES, input_end=True, input_layers=("token_embedding", "transformer_layers"),
           prompt_placements=("before_cls",), huggingface_layers=r"model\.layers", huggingface_sites=HUGGINGFACE_SITES,
           language_model=language_model, cached_forward=cached_forward, rotate_past=rotate_past)
)


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


def _tokenizer_json(folder):
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _byte_level(tokenizer_json):
    """Whether a tokenizer.json splits text as byte-level BPE does (GPT-2, Llama 3, SmolLM2)."""
    text = json.dumps({k: tokenizer_json.get(k) for k in ("pre_tokenizer", "decoder")})
    return '"ByteLevel"' in text


def tokenizer(folder):
    """keras-hub's `Llama3Tokenizer` (byte-level BPE) for the checkpoint in `folder`.

    Raises:
        ValueError: the checkpoint's tokenizer is not byte-level BPE (Llama 2
            and TinyLlama use SentencePiece's, which this tokenizer would read wrongly).
    """
    from keras_hub.src.models.llama3.llama3_tokenizer import Llama3Tokenizer
    from keras_hub.src.utils.preset_utils import get_preset_loader

    if not _byte_level(_tokenizer_json(folder)):
        raise ValueError(
            f"{folder}: tokenizer.json is not a byte-level BPE tokenizer (Llama 3, SmolLM2); SentencePiece-style "
            "Llama tokenizers (Llama 2, TinyLlama) are not supported yet."
        )
    return get_preset_loader(folder).load_tokenizer(Llama3Tokenizer)


def start_token_id(folder, tokenizer):
    """The id the checkpoint's tokenizer puts before every text, or None:
    `add_bos_token` of `tokenizer_config.json`, else a special token first in
    `tokenizer.json`'s post-processor (Llama 3's); SmolLM2 adds none."""
    path = os.path.join(folder, "tokenizer_config.json")
    settings = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    if "add_bos_token" in settings:
        return tokenizer.start_token_id if settings["add_bos_token"] else None
    processor = _tokenizer_json(folder).get("post_processor") or {}
    processors = processor.get("processors", [processor])
    for item in processors:
        single = item.get("single") if item.get("type") == "TemplateProcessing" else None
        if single and "SpecialToken" in single[0]:
            return tokenizer.token_to_id(single[0]["SpecialToken"]["id"])
    return None


def stop_token_ids(folder, tokenizer):
    """The ids that end a generation: the tokenizer's end token(s) and the
    `eos_token_id`s of `generation_config.json` (Llama 3 Instruct ends turns with another)."""
    ids = [tokenizer.end_token_id, getattr(tokenizer, "end_token2_id", None)]
    path = os.path.join(folder, "generation_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))
