"""A Gemma 3 decoder in float64 NumPy, from a Hugging Face folder's safetensors
file, written from transformers' `Gemma3ForCausalLM`: the independent reference
for the Gemma 3 family (token vectors scaled by sqrt(hidden), RMS norms
computing `x * (1 + w)`, query/key norms, rotary positions with a local and a
global base, sliding-window layers, grouped-query attention scaled by
`query_pre_attn_scalar`, post-attention and post-feed-forward norms, a tanh-GELU
gated feed-forward block, the head tied to the embeddings)."""

import json
import os

import numpy as np
from safetensors.numpy import load_file

from llama_reference import _rotate


def _rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * (1.0 + weight)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


class NumpyGemma3:
    def __init__(self, folder):
        self.config = json.load(open(os.path.join(folder, "config.json")))
        self.w = {k.removeprefix("model."): v.astype(np.float64)
                  for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}

    def __call__(self, token_ids, virtual=None, past=None, sublayer_output=None):
        """Logits [batch, length, vocab] of `token_ids` (no padding), float64.
        `virtual` ([count, hidden]) goes in front of the scaled word vectors
        unscaled (peft's prompt tuning: `inputs_embeds`); `past` ([layers, 2,
        count, kv heads, head_dim]) are unrotated keys and values every
        layer's attention reads first, the tokens then at positions count...
        (peft's prefix tuning). `sublayer_output(layer, "attention" or
        "feedforward", h)` changes what a sublayer adds to the residual stream
        (after its post-norm): where a bottleneck adapter acts."""
        after = sublayer_output or (lambda i, which, h: h)
        c, w = self.config, self.w
        heads, kv, dim, eps = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"]
        x = w["embed_tokens.weight"][token_ids] * np.sqrt(c["hidden_size"])
        if virtual is not None:
            x = np.concatenate([np.broadcast_to(virtual, (x.shape[0], *virtual.shape)), x], axis=1)
        batch, length, _ = x.shape
        before = 0 if past is None else past.shape[2]
        positions = np.arange(before, before + length, dtype=np.float64)
        query, key = np.arange(before, before + length)[:, None], np.arange(before + length)[None, :]
        for i in range(c["num_hidden_layers"]):
            p = f"layers.{i}."
            local = c["layer_types"][i] == "sliding_attention"
            theta = c["rope_local_base_freq"] if local else c["rope_theta"]
            allowed = (key <= query) & ((query - key < c["sliding_window"]) if local else True)
            h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
            q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(batch, length, heads, dim)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(batch, length, kv, dim)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(batch, length, kv, dim)
            q = _rotate(_rms_norm(q, w[p + "self_attn.q_norm.weight"], eps), positions, theta)
            k = _rotate(_rms_norm(k, w[p + "self_attn.k_norm.weight"], eps), positions, theta)
            if past is not None:
                k = np.concatenate([np.broadcast_to(past[i, 0], (batch, *past.shape[2:])), k], axis=1)
                v = np.concatenate([np.broadcast_to(past[i, 1], (batch, *past.shape[2:])), v], axis=1)
            k, v = np.repeat(k, heads // kv, axis=2), np.repeat(v, heads // kv, axis=2)
            scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(c["query_pre_attn_scalar"])
            scores = np.where(allowed, scores, -np.inf)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attention = np.einsum("bhqk,bkhd->bqhd", scores / scores.sum(-1, keepdims=True), v)
            out = attention.reshape(batch, length, heads * dim) @ w[p + "self_attn.o_proj.weight"].T
            x = x + after(i, "attention", _rms_norm(out, w[p + "post_attention_layernorm.weight"], eps))
            h = _rms_norm(x, w[p + "pre_feedforward_layernorm.weight"], eps)
            h = _gelu_tanh(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)
            h = _rms_norm(h @ w[p + "mlp.down_proj.weight"].T, w[p + "post_feedforward_layernorm.weight"], eps)
            x = x + after(i, "feedforward", h)
        return _rms_norm(x, w["norm.weight"], eps) @ w["embed_tokens.weight"].T
