"""A Llama decoder in float64 NumPy, from a Hugging Face folder's safetensors file:
the independent reference for the Llama backbones (RMS norm, rotary positions in
Hugging Face's rotate-half layout, grouped-query attention, SwiGLU, tied or own head)."""

import json
import os

import numpy as np
from safetensors.numpy import load_file


def _rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rotate(x, positions, theta):
    """Rotary embedding of x [batch, length, heads, head_dim] (rotate_half convention)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (np.arange(0, x.shape[-1], 2) / x.shape[-1])
    angles = positions[:, None] * inv_freq[None]  # [length, half]
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos[None, :, None] + rotated * sin[None, :, None]


class NumpyLlama:
    def __init__(self, folder):
        self.config = json.load(open(os.path.join(folder, "config.json")))
        self.w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}

    def __call__(self, token_ids, virtual=None, past=None):
        """Next-token logits [batch, length, vocab] for `token_ids` (no padding), float64;
        `virtual` ([count, hidden]) is put in front of the word vectors (peft's prompt
        tuning, `inputs_embeds`), and the logits are those of every position; `past`
        ([layers, 2, count, kv heads, head_dim]) are keys and values every layer's
        attention reads first, unrotated, the tokens at positions count... (peft's
        prefix tuning, `past_key_values`)."""
        c, w = self.config, self.w
        heads, kv_heads, eps = c["num_attention_heads"], c["num_key_value_heads"], c["rms_norm_eps"]
        x = w["model.embed_tokens.weight"][token_ids]
        if virtual is not None:
            x = np.concatenate([np.broadcast_to(virtual, (x.shape[0], *virtual.shape)), x], axis=1)
        batch, length, hidden = x.shape
        head_dim = hidden // heads
        before = 0 if past is None else past.shape[2]
        positions = np.arange(before, before + length, dtype=np.float64)
        causal = np.where(np.tril(np.ones((length, length), bool)), 0.0, -np.inf)
        causal = np.concatenate([np.zeros((length, before)), causal], axis=1)
        for i in range(c["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(batch, length, heads, head_dim)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(batch, length, kv_heads, head_dim)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(batch, length, kv_heads, head_dim)
            q, k = _rotate(q, positions, c["rope_theta"]), _rotate(k, positions, c["rope_theta"])
            if past is not None:
                k = np.concatenate([np.broadcast_to(past[i, 0], (batch, *past.shape[2:])), k], axis=1)
                v = np.concatenate([np.broadcast_to(past[i, 1], (batch, *past.shape[2:])), v], axis=1)
            k, v = (np.repeat(t, heads // kv_heads, axis=2) for t in (k, v))  # query head j reads kv head j // group
            scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim) + causal
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            context = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(batch, length, hidden)
            x = x + context @ w[p + "self_attn.o_proj.weight"].T
            h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
            gate = h @ w[p + "mlp.gate_proj.weight"].T
            x = x + ((gate / (1 + np.exp(-gate))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
        x = _rms_norm(x, w["model.norm.weight"], eps)
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        return x @ head.T
