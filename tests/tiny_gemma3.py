"""A tiny Gemma 3 checkpoint as llama.cpp writes one (a GGUF file with its
norms stored plus one, a SentencePiece vocabulary with llama.cpp's spellings:
control tokens, runs of spaces as spaces), with random weights and random
norm scales, six layers (five sliding-window ones and a global one, with a
window of 4 tokens, so rows longer than the window tell the two apart), and
heads wider than hidden / heads: the fixture of the Gemma 3 family's tests."""

from pathlib import Path

import gguf
import numpy as np

from keras_adapters.io import gguf_checkpoint
from keras_adapters.io import gguf_gemma3

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS, HEAD_DIM, WINDOW = 6, 32, 48, 4, 2, 16, 4
#: SentencePiece pieces ("▁" is the space) with llama.cpp's token types: 3 control,
#: 1 normal, 4 user-defined ("\n" and a run of two spaces, stored as spaces),
#: 6 byte pieces (byte fallback: a character without a piece becomes its UTF-8 bytes).
PIECES = ["▁", "a", "b", "c", "1", "2", "ab", "▁a", "abc", "▁b", "ca", "bc", "12", "▁ab", "▁c"]
TOKENS = (["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "\n", "  "]
          + [f"<0x{b:02X}>" for b in range(256)] + PIECES)
TYPES = [3, 3, 3, 3, 3, 3, 4, 4] + [6] * 256 + [1] * len(PIECES)
#: BPE merges by score: a merged piece of a higher score is made first.
SCORES = [0.0] * (8 + 256) + [-float(i) for i in range(len(PIECES))]


def hf_weights(seed=0, embedding_scale=1.0):
    """Hugging Face Gemma3ForCausalLM tensors (float32): norms random around 0 (Gemma computes `x * (1 + w)`)."""
    rng = np.random.default_rng(seed)
    shapes = {"self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN), "self_attn.k_proj": (KV_HEADS * HEAD_DIM, HIDDEN),
              "self_attn.v_proj": (KV_HEADS * HEAD_DIM, HIDDEN), "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
              "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN), "mlp.down_proj": (HIDDEN, FFN)}
    norms = {"input_layernorm": HIDDEN, "post_attention_layernorm": HIDDEN, "pre_feedforward_layernorm": HIDDEN,
             "post_feedforward_layernorm": HIDDEN, "self_attn.q_norm": HEAD_DIM, "self_attn.k_norm": HEAD_DIM}
    out = {"model.embed_tokens.weight": rng.normal(0, 0.3 * embedding_scale, (len(TOKENS), HIDDEN)),
           "model.norm.weight": rng.normal(0, 0.3, HIDDEN)}
    for i in range(LAYERS):
        for name, shape in shapes.items():
            out[f"model.layers.{i}.{name}.weight"] = rng.normal(0, 0.25, shape)
        for name, width in norms.items():
            out[f"model.layers.{i}.{name}.weight"] = rng.normal(0, 0.3, width)
    return {k: v.astype(np.float32) for k, v in out.items()}


def write_tiny_gguf(path, seed=0, embedding_scale=1.0, chat_template=None, edit=None, block_count=LAYERS):
    """The tiny Gemma 3 as llama.cpp writes it (`block_count` as the file says); returns the Hugging Face weights."""
    weights = hf_weights(seed, embedding_scale)
    names = {v: k for k, v in gguf_gemma3.LAYER_NAMES.items()}
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_block_count(block_count)
    writer.add_context_length(128)
    writer.add_embedding_length(HIDDEN)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(WINDOW)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores(SCORES)
    writer.add_token_types(TYPES)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    if chat_template:
        writer.add_chat_template(chat_template)
    for name, value in weights.items():
        if name.endswith("norm.weight"):
            value = value + np.float32(1.0)  # llama.cpp's Gemma norms
        if name in ("model.embed_tokens.weight", "model.norm.weight"):
            writer.add_tensor("token_embd.weight" if "embed" in name else "output_norm.weight", value)
            continue
        _, _, layer, *module, _ = name.split(".")
        writer.add_tensor(f"blk.{layer}.{names['.'.join(module)]}.weight", value)
    if edit is not None:
        edit(writer)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


#: Gemma's chat template, cut down: `{{ bos_token }}` first, turns between markers, the assistant as `model`.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<start_of_turn>"
                 "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] }}<end_of_turn>\n"
                 "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")


def tiny_gemma3_folder(directory, seed=0, embedding_scale=1.0, chat_template=None):
    """A Hugging Face folder of the tiny Gemma 3 (converted from its GGUF), in `directory`."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    write_tiny_gguf(f"{directory}/tiny.gguf", seed=seed, embedding_scale=embedding_scale, chat_template=chat_template)
    return str(gguf_checkpoint.convert_gguf(f"{directory}/tiny.gguf", f"{directory}/hf"))
