"""A GPT-2 decoder in float64 NumPy, from a Hugging Face folder's safetensors file:
the independent reference for the GPT-2 family (Conv1D weights `[in, out]`,
the fused query/key/value projection, learned absolute positions, pre-norm
layers with biases, tanh GELU, the head tied to the word embeddings)."""

import json
import os

import numpy as np
from safetensors.numpy import load_file


def _layer_norm(x, weight, bias, eps):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * weight + bias


def _gelu_new(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


class NumpyGPT2:
    def __init__(self, folder):
        self.config = json.load(open(os.path.join(folder, "config.json")))
        weights = load_file(os.path.join(folder, "model.safetensors"))
        self.w = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in weights.items()}

    def __call__(self, token_ids, virtual=None, past=None):
        """Next-token logits [batch, length, vocab] of `token_ids` (no padding),
        float64. `virtual` ([count, hidden]) goes in front of the word vectors
        and takes positions 0... (peft's prompt tuning, `inputs_embeds`); the
        logits are those of every position. `past` ([layers, 2, count, heads,
        head_dim]) are keys and values every layer's attention reads first,
        the tokens then at positions count... (peft's prefix tuning,
        `past_key_values`: transformers numbers tokens after the cache)."""
        c, w = self.config, self.w
        heads, eps, hidden = c["n_head"], c["layer_norm_epsilon"], c["n_embd"]
        x = w["wte.weight"][token_ids]
        if virtual is not None:
            x = np.concatenate([np.broadcast_to(virtual, (x.shape[0], *virtual.shape)), x], axis=1)
        batch, length, _ = x.shape
        head_dim = hidden // heads
        before = 0 if past is None else past.shape[2]
        x = x + w["wpe.weight"][before:before + length]
        causal = np.where(np.tril(np.ones((length, length), bool)), 0.0, -np.inf)
        causal = np.concatenate([np.zeros((length, before)), causal], axis=1)
        for i in range(c["n_layer"]):
            p = f"h.{i}."
            h = _layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
            qkv = h @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
            q, k, v = (t.reshape(batch, length, heads, head_dim) for t in np.split(qkv, 3, axis=-1))
            if past is not None:
                k = np.concatenate([np.broadcast_to(past[i, 0], (batch, *past.shape[2:])), k], axis=1)
                v = np.concatenate([np.broadcast_to(past[i, 1], (batch, *past.shape[2:])), v], axis=1)
            scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim) + causal
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attention = np.einsum("bhqk,bkhd->bqhd", scores / scores.sum(-1, keepdims=True), v)
            x = x + attention.reshape(batch, length, hidden) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
            h = _layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
            h = _gelu_new(h @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"])
            x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
        x = _layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
        return x @ w["wte.weight"].T
