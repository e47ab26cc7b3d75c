"""Llama-architecture GGUF files (SmolLM2, Llama 3 with a byte-level BPE
tokenizer) as Hugging Face Llama folders (`keras_adapters.io.gguf_checkpoint`).

llama.cpp interleaves each head's rotary halves in the query and key rows;
that permutation is undone as transformers' GGUF loader does. Files with a
byte-level BPE tokenizer (`gpt2`, the pre-tokenizers in `PRE_TOKENIZERS`:
SmolLM2's among them) and no rope scaling convert; others (Llama 2's
SentencePiece tokenizer, Llama 3's `llama-bpe` pre-tokenizer, Llama 3.1's
rope frequencies) are refused by name.
"""

import numpy as np

from keras_adapters.io.gguf_reading import GGUFError
from keras_adapters.io.gguf_reading import fields
from keras_adapters.io.gguf_reading import hf_tensors

#: llama.cpp's layer modules -> Hugging Face Llama's.
LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
#: How each llama.cpp pre-tokenizer splits text before BPE, as a `tokenizer.json` pre_tokenizer.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "gpt-2": _BYTE_LEVEL,
    "default": _BYTE_LEVEL,
}
#: llama.cpp token types: control tokens are special, user-defined ones are added but not special.
_CONTROL, _USER_DEFINED = 3, 4


def read_config(reader):
    """The Hugging Face `config.json` of the Llama model in `reader` (a `gguf.GGUFReader`)."""
    value = fields(reader, "Llama")
    names = {t.name for t in reader.tensors}
    if value("llama.rope.scaling.type", None) not in (None, "none") or "rope_freqs.weight" in names:
        raise GGUFError("its rope scaling (Llama 3.1-style rope frequencies) is not converted yet.")
    hidden, heads = value("llama.embedding_length"), value("llama.attention.head_count")
    if value("llama.rope.dimension_count", hidden // heads) != hidden // heads:
        raise GGUFError(
            f"its heads are {value('llama.rope.dimension_count')} wide, not hidden size / heads = {hidden // heads}; "
            "keras-hub's Llama computes only the latter."
        )
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": int(value("llama.vocab_size", None) or len(value("tokenizer.ggml.tokens"))),
        "num_hidden_layers": int(value("llama.block_count")),
        "hidden_size": int(value("llama.embedding_length")),
        "intermediate_size": int(value("llama.feed_forward_length")),
        "num_attention_heads": int(value("llama.attention.head_count")),
        "num_key_value_heads": int(value("llama.attention.head_count_kv", value("llama.attention.head_count"))),
        "rope_theta": float(value("llama.rope.freq_base", 10000.0)),
        "rms_norm_eps": float(np.float32(value("llama.attention.layer_norm_rms_epsilon", 1e-5))),
        "max_position_embeddings": int(value("llama.context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in names,
        "hidden_act": "silu",
        "bos_token_id": value("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": value("tokenizer.ggml.eos_token_id", None),
        "pad_token_id": value("tokenizer.ggml.padding_token_id", None),
        "torch_dtype": "float32",
    }


def _reverse_permute(weights, heads):
    """Undo llama.cpp's interleaving of each head's rotary halves (transformers'
    `LlamaConverter._reverse_permute_weights`)."""
    half = weights.shape[0] // heads // 2
    return weights.reshape(heads, half, 2, *weights.shape[1:]).swapaxes(2, 1).reshape(weights.shape)


def read_tensors(reader, config):
    """{Hugging Face name: float32 array} of every tensor, dequantized, query and key rows un-permuted."""

    def fix(name, weights):
        if name.endswith("q_proj.weight"):
            return _reverse_permute(weights, config["num_attention_heads"])
        if name.endswith("k_proj.weight"):
            return _reverse_permute(weights, config["num_key_value_heads"])
        return weights

    return hf_tensors(reader, LAYER_NAMES, "Llama", fix)


def read_tokenizer(reader):
    """{file name: contents} of the GGUF's BPE tokenizer: `tokenizer.json` and `tokenizer_config.json`."""
    value = fields(reader, "Llama")
    if value("tokenizer.ggml.model", None) != "gpt2":
        raise GGUFError(f"tokenizer model {value('tokenizer.ggml.model')!r}: only byte-level BPE ('gpt2') converts here.")
    pre = value("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"pre-tokenizer {pre!r} is not known here (known: {sorted(PRE_TOKENIZERS)}).")
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    if len(types) != len(tokens):
        raise GGUFError(f"it lists {len(tokens)} tokens but {len(types)} token types.")
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": kind == _CONTROL}
        for i, (t, kind) in enumerate(zip(tokens, types)) if kind in (_CONTROL, _USER_DEFINED)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": list(value("tokenizer.ggml.merges")),
        },
    }
    settings = tokenizer_settings(value, tokens, "PreTrainedTokenizerFast", int(value("llama.context_length", 2048)))
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": settings}


def tokenizer_settings(value, tokens, tokenizer_class, max_length):
    """`tokenizer_config.json`: the special tokens, `add_bos_token` and the chat template the file records."""

    def token(key):
        index = value(f"tokenizer.ggml.{key}_token_id", None)
        return None if index is None else tokens[index]

    return {
        "tokenizer_class": tokenizer_class,
        "bos_token": token("bos"), "eos_token": token("eos"), "pad_token": token("padding"), "unk_token": token("unknown"),
        "add_bos_token": bool(value("tokenizer.ggml.add_bos_token", False)),
        "chat_template": value("tokenizer.chat_template", None),
        "model_max_length": max_length,
    }
