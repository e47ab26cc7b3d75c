"""A tiny Llama checkpoint as llama.cpp writes one (a GGUF file with a byte-level
BPE tokenizer and a chat template), with random weights and random RMS-norm
scales (a norm bug changes its outputs): the fixture of the GGUF conversion
and of the decoder tests."""

from pathlib import Path

import gguf
import numpy as np

from keras_adapters.io import gguf_checkpoint

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS = 2, 32, 48, 4, 2  # Q8_0 blocks are 32 wide
# Byte-level BPE: a few letters as bytes ("Ġ" is the byte-level space), then merges.
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "Ġ", "1", "2", "ab", "Ġa", "abc", "12", "<tool>"]
MERGES = ["a b", "Ġ a", "ab c", "1 2"]  # "12" exists, but SmolLM2's pre-tokenizer splits digits first
TYPES = [3, 3, 3] + [1] * (len(TOKENS) - 4) + [4]  # control, normal, one user-defined


def _llama_cpp_permute(weights, heads):
    """llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` (what the loader must undo)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _hf_weights(seed=0):
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS
    shapes = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV_HEADS * head_dim, HIDDEN),
              "self_attn.v_proj": (KV_HEADS * head_dim, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
              "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN),
              "input_layernorm": (HIDDEN,), "post_attention_layernorm": (HIDDEN,)}
    out = {"model.embed_tokens.weight": rng.normal(0, 1, (len(TOKENS), HIDDEN)), "model.norm.weight": rng.uniform(0.5, 1.5, HIDDEN)}
    for i in range(LAYERS):
        for name, shape in shapes.items():
            out[f"model.layers.{i}.{name}.weight"] = rng.normal(0, 0.2, shape)
    return {k: v.astype(np.float32) for k, v in out.items()}


def write_tiny_gguf(path, arch="llama", quantize_embeddings=False, seed=0, embedding_scale=1.0, edit=None):
    """A tiny Llama GGUF as llama.cpp writes one (Q/K rows permuted); returns the Hugging Face weights.
    `edit(writer)` may add fields or tensors; `edit.omit` names writer calls to leave out."""
    weights = _hf_weights(seed)
    weights["model.embed_tokens.weight"] *= np.float32(embedding_scale)
    names = {v: k for k, v in gguf_checkpoint.LAYER_NAMES.items()}
    writer = gguf.GGUFWriter(str(path), arch)
    if "add_block_count" not in getattr(edit, "omit", ()):
        writer.add_block_count(LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TOKENS)
    writer.add_token_types(TYPES)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    for name, value in weights.items():
        if name == "model.embed_tokens.weight":
            if quantize_embeddings:
                q = gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0)
                writer.add_tensor("token_embd.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor("token_embd.weight", value)
            continue
        if name == "model.norm.weight":
            writer.add_tensor("output_norm.weight", value)
            continue
        _, _, layer, *module, _ = name.split(".")
        module = ".".join(module)
        if module == "self_attn.q_proj":
            value = _llama_cpp_permute(value, HEADS)
        elif module == "self_attn.k_proj":
            value = _llama_cpp_permute(value, KV_HEADS)
        writer.add_tensor(f"blk.{layer}.{names[module]}.weight", value)
    if edit is not None:
        edit(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights



def tiny_llama_folder(directory, seed=0, embedding_scale=1.0):
    """A Hugging Face folder of the tiny Llama (converted from its GGUF), in `directory`.
    A small `embedding_scale` lets the layers, not the token's own embedding, pick the next token."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(f"{directory}/tiny.gguf", seed=seed, embedding_scale=embedding_scale)
    return gguf_checkpoint.convert_gguf(f"{directory}/tiny.gguf", f"{directory}/hf")
