"""GGUF checkpoints (llama.cpp's format) as Hugging Face folders keras-hub loads.

A `.gguf` file holds a model's config and tokenizer as metadata and its
weights, often quantized. `convert_gguf` reads it with the `gguf` package,
dequantizes every tensor to float32 (so Q4_1 weights become a float32 model
that computes what the quantized one does, not the original float model),
undoes llama.cpp's row permutation of the query and key projections (as
transformers' GGUF loader does), and writes `config.json`,
`model.safetensors`, `tokenizer.json` and `tokenizer_config.json` under
Hugging Face's names. `cached_folder` does that once per file, keyed and
checked by the file's SHA-256.

Files of architecture `llama` with a byte-level BPE tokenizer (`gpt2`, the
pre-tokenizers in `PRE_TOKENIZERS`: SmolLM2's among them) and no rope
scaling convert; others (Llama 2's SentencePiece tokenizer, Llama 3's
`llama-bpe` pre-tokenizer, Llama 3.1's rope frequencies, other architectures)
are refused by name.
"""

import json
from pathlib import Path

import numpy as np

from keras_adapters.io.adapter_folder import file_sha256 as sha256
from keras_adapters.io.adapter_folder import replace_folder

#: llama.cpp's tensor names -> Hugging Face Llama's.
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
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
SOURCE_FILE = "gguf_source.json"


class GGUFError(ValueError):
    """A GGUF file this library cannot convert."""


def _fields(reader):
    """`value(name, default)`; a field without a default must be there."""
    missing = object()

    def value(name, default=missing):
        field = reader.fields.get(name)
        if field is not None:
            return field.contents()
        if default is missing:
            raise GGUFError(f"the GGUF file has no {name!r} field, which a Llama model needs.")
        return default

    return value


def is_gguf_file(path):
    """Whether `path` names a GGUF checkpoint file."""
    return str(path).endswith(".gguf") and Path(path).is_file()


def read_config(reader):
    """The Hugging Face `config.json` of the Llama model in `reader` (a `gguf.GGUFReader`)."""
    value = _fields(reader)
    arch = value("general.architecture", None)
    if arch != "llama":
        raise GGUFError(f"GGUF architecture {arch!r}: only Llama-family files (architecture 'llama') convert here.")
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
    """{Hugging Face name: float32 array} of every tensor, dequantized."""
    from gguf import dequantize

    out = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        weights = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
        if name.endswith("q_proj.weight"):
            weights = _reverse_permute(weights, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            weights = _reverse_permute(weights, config["num_key_value_heads"])
        out[name] = np.ascontiguousarray(weights)
    return out


def _hf_name(name):
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in LAYER_NAMES and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.weight"
    raise GGUFError(f"GGUF tensor {name!r} has no place in a Llama model; nothing was converted.")


def read_tokenizer(reader):
    """(`tokenizer.json`, `tokenizer_config.json`) contents for the GGUF's BPE tokenizer."""
    value = _fields(reader)
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

    def token(key):
        index = value(f"tokenizer.ggml.{key}_token_id", None)
        return None if index is None else tokens[index]

    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"), "eos_token": token("eos"), "pad_token": token("padding"), "unk_token": token("unknown"),
        "add_bos_token": bool(value("tokenizer.ggml.add_bos_token", False)),
        "chat_template": value("tokenizer.chat_template", None),
        "model_max_length": int(value("llama.context_length", 2048)),
    }
    return tokenizer, settings


def convert_gguf(path, output, digest=None):
    """Write the GGUF file `path` as a Hugging Face Llama folder `output`
    (replaced whole, or left as it was on failure); `digest`: the file's
    SHA-256 when the caller has it. Returns `output`.

    Raises:
        GGUFError: the file is not a Llama-family GGUF this library converts.
    """
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, KeyError) as e:
        raise GGUFError(f"{path} is not a readable GGUF file: {e}") from None
    config = read_config(reader)
    tokenizer, settings = read_tokenizer(reader)
    tensors = read_tensors(reader, config)
    source = {"gguf": Path(path).name, "sha256": digest or sha256(path),
              "note": "dequantized to float32: a quantized model's weights, not the original float ones"}

    def fill(folder):
        folder = Path(folder)
        save_file(tensors, str(folder / "model.safetensors"))  # straight to disk: no second copy in memory
        for name, data in (("config.json", config), ("tokenizer.json", tokenizer),
                           ("tokenizer_config.json", settings), (SOURCE_FILE, source)):
            (folder / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    return replace_folder(output, fill)


def cached_folder(path, cache_dir):
    """The converted folder of GGUF file `path` under `cache_dir`, converting
    it the first time; a folder whose recorded SHA-256 is not the file's is
    converted again."""
    digest = sha256(path)
    folder = Path(cache_dir) / f"{Path(path).stem}-{digest[:16]}"
    try:
        recorded = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError):
        recorded = None
    if recorded != digest:
        convert_gguf(path, folder, digest)
    return folder
