"""A float64 NumPy BERT read straight from a Hugging Face safetensors file.

An independent reference for the keras-hub backbone (and for LoRA weights in
peft's layout): no Keras, no TensorFlow, no keras-hub conversion code.
"""

import json
import math
import os

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf


def _layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _gelu_erf(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


#: transformers' ACT2FN names, computed here in float64 on their own.
ACTIVATIONS = {"gelu": _gelu_erf, "gelu_new": _gelu_tanh, "gelu_pytorch_tanh": _gelu_tanh, "relu": lambda x: np.maximum(x, 0)}


class NumpyBert:
    def __init__(self, folder):
        self.config = json.load(open(os.path.join(folder, "config.json")))
        self.w = {
            k: v.astype(np.float64)
            for k, v in load_file(os.path.join(folder, "model.safetensors")).items()
        }

    def __call__(self, token_ids, segment_ids, padding_mask, lora=None, prompt=None, prefix=None, bottleneck=None,
                 word_prompt=None, first=False):
        """sequence_output, float64. `lora`: {(layer, "query"): (lora_A, lora_B, scale)};
        `prompt`: [n, hidden] vectors inserted after [CLS] into the embedding output
        (prompt tuning) and taken out of the result again; `prefix`: {layer: (keys, values)},
        each [p, hidden], put in front of that layer's projected keys and values (prefix tuning);
        `bottleneck`: {(layer, "attention" | "ffn"): Bottleneck}, an adapter on that sublayer's
        output (see `Bottleneck`); `word_prompt`: [n, hidden] word vectors put before [CLS] as peft's
        prompt tuning does (positions counted over the whole sequence, segment 0), taken out again;
        `first`: also return the first position's output (what BERT's pooler reads)."""
        c, w = self.config, self.w
        eps = c["layer_norm_eps"]
        heads = c["num_attention_heads"]
        words = w["embeddings.word_embeddings.weight"][token_ids]
        front = 0 if word_prompt is None else len(word_prompt)
        if front:
            batch = token_ids.shape[0]
            words = np.concatenate([np.broadcast_to(word_prompt, (batch, *word_prompt.shape)), words], axis=1)
            segment_ids = np.concatenate([np.zeros((batch, front), segment_ids.dtype), segment_ids], axis=1)
            padding_mask = np.concatenate([np.ones((batch, front), bool), padding_mask], axis=1)
        length = words.shape[1]
        x = (
            words
            + w["embeddings.position_embeddings.weight"][:length][None]
            + w["embeddings.token_type_embeddings.weight"][segment_ids]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        n = 0 if prompt is None else len(prompt)
        if n:
            batch = x.shape[0]
            x = np.concatenate([x[:, :1], np.broadcast_to(prompt, (batch, *prompt.shape)), x[:, 1:]], axis=1)
            padding_mask = np.concatenate([padding_mask[:, :1], np.ones((batch, n), bool), padding_mask[:, 1:]], 1)
            length += n
        mask = np.where(padding_mask[:, None, None, :], 0.0, -1e9)
        for i in range(c["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def linear(h, name, kind=None):
                weight = w[p + name + ".weight"]
                if lora and (i, kind) in lora:
                    a, b, scale = lora[(i, kind)]
                    weight = weight + scale * (b @ a)  # peft: W + s * B A
                return h @ weight.T + w[p + name + ".bias"]

            q = linear(x, "attention.self.query", "query")
            k = linear(x, "attention.self.key", "key")
            v = linear(x, "attention.self.value", "value")
            layer_mask = mask
            if prefix and i in prefix:
                pk, pv = (np.broadcast_to(t, (x.shape[0], *t.shape)) for t in prefix[i])
                k, v = np.concatenate([pk, k], 1), np.concatenate([pv, v], 1)
                layer_mask = np.concatenate([np.zeros((*mask.shape[:3], len(pk[0]))), mask], -1)
            split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
            q, k, v = split(q), split(k), split(v)
            scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1]) + layer_mask
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
            attn_norm = lambda t: _layer_norm(  # noqa: E731
                t, w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
            ffn_norm = lambda t: _layer_norm(t, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)  # noqa: E731
            attn = linear(context, "attention.output.dense")
            if bottleneck and (i, "attention") in bottleneck:
                attn = bottleneck[(i, "attention")](attn, x, attn_norm)
            x = attn_norm(attn + x)
            h = ACTIVATIONS[c.get("hidden_act", "gelu")](linear(x, "intermediate.dense"))
            out = linear(h, "output.dense")
            if bottleneck and (i, "ffn") in bottleneck:
                out = bottleneck[(i, "ffn")](out, x, ffn_norm)
            x = ffn_norm(out + x)
        sequence = np.concatenate([x[:, front : front + 1], x[:, front + 1 + n :]], axis=1)
        return (sequence, x[:, 0]) if first else sequence


class Bottleneck:
    """A bottleneck adapter on a sublayer's output `h` (input `x`, the block's layer norm `LN`),
    as AdapterHub 1.3 computes its three placements; the block then computes `LN(result + x)`.

    - "sequential": `h + up(f(down(h)))` (Houlsby, Pfeiffer, AdapterHub's double_seq_bn)
    - "normed": `h + up(f(down(LN(h + x))))` (AdapterHub's seq_bn: original_ln_before)
    - "parallel": `h + scale * up(f(down(x)))` (AdapterHub's par_bn)

    Weights as Keras keeps them: kernels [in, out].
    """

    def __init__(self, down_kernel, down_bias, up_kernel, up_bias, activation, placement="sequential", scale=1.0):
        self.down = (np.asarray(down_kernel, np.float64), np.asarray(down_bias, np.float64))
        self.up = (np.asarray(up_kernel, np.float64), np.asarray(up_bias, np.float64))
        self.activation, self.placement, self.scale = activation, placement, scale

    def __call__(self, h, x, layer_norm):
        source = {"sequential": h, "normed": layer_norm(h + x), "parallel": x}[self.placement]
        inner = self.activation(source @ self.down[0] + self.down[1])
        return h + self.scale * (inner @ self.up[0] + self.up[1])
