"""A tiny GPT-2 checkpoint as Hugging Face saves one (Conv1D weights `[in, out]`,
the fused `c_attn` query/key/value projection, `vocab.json` and `merges.txt`),
with random weights, biases and layer norms (a norm or bias bug changes its
outputs): the fixture of the GPT-2 family's tests."""

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

LAYERS, HIDDEN, HEADS, POSITIONS = 2, 16, 4, 40
# Byte-level BPE ("Ġ" is the byte-level space); GPT-2 ends texts with <|endoftext|>.
TOKENS = ["<|endoftext|>", "a", "b", "c", "Ġ", "1", "2", "ab", "Ġa", "abc", "12", "Ġb", "ca", "bc"]
MERGES = ["a b", "Ġ a", "ab c", "1 2", "Ġ b", "c a", "b c"]


def hf_weights(seed=0, embedding_scale=1.0):
    """Hugging Face GPT2LMHeadModel tensors (`transformer.` keys), float32."""
    rng = np.random.default_rng(seed)
    out = {"transformer.wte.weight": rng.normal(0, embedding_scale, (len(TOKENS), HIDDEN)),
           "transformer.wpe.weight": rng.normal(0, 0.5, (POSITIONS, HIDDEN)),
           "transformer.ln_f.weight": rng.uniform(0.5, 1.5, HIDDEN), "transformer.ln_f.bias": rng.normal(0, 0.1, HIDDEN)}
    shapes = {"attn.c_attn": (HIDDEN, 3 * HIDDEN), "attn.c_proj": (HIDDEN, HIDDEN),
              "mlp.c_fc": (HIDDEN, 4 * HIDDEN), "mlp.c_proj": (4 * HIDDEN, HIDDEN)}
    for i in range(LAYERS):
        p = f"transformer.h.{i}."
        for name in ("ln_1", "ln_2"):
            out[p + name + ".weight"] = rng.uniform(0.5, 1.5, HIDDEN)
            out[p + name + ".bias"] = rng.normal(0, 0.1, HIDDEN)
        for name, shape in shapes.items():
            out[p + name + ".weight"] = rng.normal(0, 0.3, shape)
            out[p + name + ".bias"] = rng.normal(0, 0.1, shape[1])
    return {k: v.astype(np.float32) for k, v in out.items()}


def tiny_gpt2_folder(directory, seed=0, embedding_scale=1.0):
    """A Hugging Face GPT-2 folder in `directory`; returns its path.
    A small `embedding_scale` lets the layers, not the token's own embedding, pick the next token."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": len(TOKENS),
              "n_layer": LAYERS, "n_embd": HIDDEN, "n_head": HEADS, "n_positions": POSITIONS, "n_inner": None,
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
              "attn_pdrop": 0.0, "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(TOKENS)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    save_file(hf_weights(seed, embedding_scale), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return str(folder)
