"""Gemma 3 GGUF files (text-only: Gemma 3 270M, 1B) as Hugging Face
`gemma3_text` folders (`keras_adapters.io.gguf_checkpoint`).

llama.cpp stores Gemma's RMS-norm weights plus one (Gemma computes
`x * (1 + w)`); they are taken back, as transformers' GGUF loader does. The
tokenizer is SentencePiece's: the file lists its pieces, scores and types,
from which `tokenizer.model` is rebuilt (a byte-fallback BPE model without
normalization or a dummy prefix, as Gemma's). Two of llama.cpp's spellings
are undone on the way: runs of spaces are stored as spaces, not `▁`, and
control tokens other than `<bos>`, `<eos>` and `<pad>` (`<start_of_turn>`,
`<end_of_turn>`, ...) become user-defined pieces, so that a chat template's
markers written in text are read as their ids, as Hugging Face's tokenizer
reads them.
"""

import numpy as np

from keras_adapters.io.gguf_llama import tokenizer_settings
from keras_adapters.io.gguf_reading import GGUFError
from keras_adapters.io.gguf_reading import fields
from keras_adapters.io.gguf_reading import hf_tensors

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "post_ffw_norm": "post_feedforward_layernorm",
}
#: Every sixth layer attends globally (llama.cpp and keras-hub both fix this pattern for Gemma 3).
WINDOW_PATTERN = 6
#: Gemma 3 1B's layers: larger Gemma 3 models differ in what the file does not record.
MAX_LAYERS = 26
#: Gemma 3's local (sliding-window) layers' rotary base.
LOCAL_ROPE_THETA = 10000.0
_UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 2, 3, 4, 6


def read_config(reader):
    """The Hugging Face `config.json` of the Gemma 3 model in `reader` (a `gguf.GGUFReader`)."""
    value = fields(reader, "Gemma 3")
    names = {t.name for t in reader.tensors}
    if value("gemma3.rope.scaling.type", None) not in (None, "none"):
        raise GGUFError(f"its rope scaling ({value('gemma3.rope.scaling.type')}, Gemma 3 4B and larger) is not "
                        "converted yet; Gemma 3 270M and 1B files convert.")
    if any(n.startswith(("mm.", "v.")) for n in names):
        raise GGUFError("it holds a vision tower; only text-only Gemma 3 files (270M, 1B) convert here.")
    layers, head_dim = int(value("gemma3.block_count")), int(value("gemma3.attention.key_length"))
    if layers > MAX_LAYERS:  # 4B and up scale their global layers' rope (and 27B its queries) otherwise
        raise GGUFError(f"it has {layers} layers: Gemma 3 4B and larger (more than {MAX_LAYERS} layers) are not "
                        "converted yet; Gemma 3 270M and 1B files convert.")
    if value("gemma3.attention.value_length", head_dim) != head_dim:
        raise GGUFError("its keys and values differ in width; Gemma 3 (and keras-hub's Gemma3Backbone) has one head_dim.")
    rope_theta = float(value("gemma3.rope.freq_base", 1_000_000.0))
    return {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "vocab_size": len(value("tokenizer.ggml.tokens")),
        "num_hidden_layers": layers,
        "hidden_size": int(value("gemma3.embedding_length")),
        "intermediate_size": int(value("gemma3.feed_forward_length")),
        "num_attention_heads": int(value("gemma3.attention.head_count")),
        "num_key_value_heads": int(value("gemma3.attention.head_count_kv")),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "rms_norm_eps": float(np.float32(value("gemma3.attention.layer_norm_rms_epsilon", 1e-6))),
        "rope_theta": rope_theta,
        "rope_local_base_freq": LOCAL_ROPE_THETA,
        "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": rope_theta},
                            "sliding_attention": {"rope_type": "default", "rope_theta": LOCAL_ROPE_THETA}},
        "sliding_window": int(value("gemma3.attention.sliding_window")),
        "layer_types": ["full_attention" if (i + 1) % WINDOW_PATTERN == 0 else "sliding_attention" for i in range(layers)],
        "max_position_embeddings": int(value("gemma3.context_length", 32768)),
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": value("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": value("tokenizer.ggml.eos_token_id", None),
        "pad_token_id": value("tokenizer.ggml.padding_token_id", None),
        "torch_dtype": "float32",
    }


def read_tensors(reader, config):
    """{Hugging Face name: float32 array} of every tensor, dequantized, norms less one."""
    return hf_tensors(reader, LAYER_NAMES, "Gemma 3",
                      lambda name, weights: weights - np.float32(1.0) if name.endswith("norm.weight") else weights)


def sentencepiece_model(value):
    """The serialized SentencePiece `ModelProto` of the file's tokenizer."""
    from sentencepiece import sentencepiece_model_pb2 as protos

    if value("tokenizer.ggml.model", None) != "llama":
        raise GGUFError(f"tokenizer model {value('tokenizer.ggml.model', None)!r}: Gemma's is SentencePiece ('llama').")
    tokens, scores, types = (value(f"tokenizer.ggml.{k}") for k in ("tokens", "scores", "token_type"))
    if not len(tokens) == len(scores) == len(types):
        raise GGUFError(f"it lists {len(tokens)} tokens, {len(scores)} scores and {len(types)} token types.")
    unknown = value("tokenizer.ggml.unknown_token_id")
    reserved = {value(f"tokenizer.ggml.{k}_token_id", -1) for k in ("bos", "eos", "padding")}
    model = protos.ModelProto()
    for i, (token, score, kind) in enumerate(zip(tokens, scores, types)):
        piece = model.pieces.add()
        piece.piece = "\u2581" * len(token) if token and not token.strip(" ") else token
        piece.score = float(score)
        piece.type = _UNKNOWN if i == unknown else _USER_DEFINED if kind == _CONTROL and i not in reserved else int(kind)
    trainer = model.trainer_spec
    trainer.model_type = protos.TrainerSpec.BPE
    trainer.vocab_size = len(tokens)
    trainer.byte_fallback = sum(kind == _BYTE for kind in types) == 256  # SentencePiece wants all or none
    for kind, key in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        index = value(f"tokenizer.ggml.{key}_token_id", -1)
        setattr(trainer, f"{kind}_id", index)
        if index >= 0:  # SentencePiece finds them by piece (its defaults are <s>, </s>, ...)
            setattr(trainer, f"{kind}_piece", tokens[index])
    for spec in (model.normalizer_spec, model.denormalizer_spec):
        spec.name = "identity"
        spec.add_dummy_prefix = bool(value("tokenizer.ggml.add_space_prefix", False))
        spec.remove_extra_whitespaces = False
        spec.escape_whitespaces = True
    return model.SerializeToString()


def read_tokenizer(reader):
    """{file name: contents}: `tokenizer.model`, `tokenizer_config.json`, and
    `generation_config.json` (a chat model also stops at `<end_of_turn>`)."""
    value = fields(reader, "Gemma 3")
    tokens = value("tokenizer.ggml.tokens")
    settings = tokenizer_settings(value, tokens, "GemmaTokenizer", int(value("gemma3.context_length", 32768)))
    stops = [value("tokenizer.ggml.eos_token_id")]
    if settings["chat_template"] and "<end_of_turn>" in tokens:
        stops.append(tokens.index("<end_of_turn>"))
    return {"tokenizer.model": sentencepiece_model(value), "tokenizer_config.json": settings,
            "generation_config.json": {"eos_token_id": stops}}
