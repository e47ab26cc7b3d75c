"""Our decoder adapters as peft folders of causal LMs (`task_type: CAUSAL_LM`),
which `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE),
FOLDER)` loads to compute what the adapter computes here.

LoRA (rsLoRA, DoRA, per-unit ranks and alphas), (IA)^3, prompt tuning and
prefix tuning convert; bottleneck adapters have no peft type. A family whose
Hugging Face layers fuse several sites into one module (GPT-2's `c_attn`:
queries, keys and values) gets one peft module for them, exactly: LoRA's
`A` rows of the sites one after another and `B` block-diagonal (rank = the
sum of theirs, alpha chosen so that the module's scaling is theirs), an
(IA)^3 output scale of 1 for a site without one.
"""

import json
import math
import re
from pathlib import Path

import numpy as np

from keras_adapters.io.adapter_folder import AdapterFormatError
from keras_adapters.io.adapter_folder import replace_folder
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.prompt import PROMPT_KEY

_PREFIX_KEYS = ("embeddings/embedding_output/keys", "embeddings/embedding_output/values")
PEFT_TYPES = {"lora": "LORA", "ia3": "IA3", "prompt": "PROMPT_TUNING", "prefix": "PREFIX_TUNING"}


def _fail(message):
    raise AdapterFormatError(f"Cannot write a peft folder: {message}.")


class CausalLMWriter:
    """peft's config and tensors for one decoder adapter.

    Args:
        method: the adapter folder's `method` config.
        tensors: {our key: array} of the adapter folder.
        family: the backbone's family (`huggingface_sites`, `huggingface_layer_name`).
        cache_shape: (layers, kv heads, head_dim) of the decoder.
        hidden_dim: its hidden size.
    """

    def __init__(self, method, tensors, family, cache_shape, hidden_dim):
        self.method, self.tensors, self.family = method, tensors, family
        self.layers, self.kv_heads, self.head_dim = cache_shape
        self.hidden_dim = hidden_dim
        self.kind = PEFT_TYPES.get(method.get("method"))
        if self.kind is None:
            _fail(f"method {method.get('method')!r} has no peft type (of ours, peft has {sorted(PEFT_TYPES)}); "
                  "export it with `keras-adapters export` instead")
        self.modules = {}  # site -> (Hugging Face module, the sites it holds in output order)
        for module, sites in family.huggingface_sites.items():
            sites = (sites,) if isinstance(sites, str) else tuple(sites)
            for site in sites:
                self.modules[site] = (module, sites)

    def _name(self, layer, module):
        return f"{self.family.huggingface_layer_name}.{layer}.{module}"

    def _units(self):
        """{(layer, module): {site: {weight: array}}} of the adapter's layer units."""
        units = {}
        ours = re.compile(rf"{self.family.layer_prefix}(\d+)/(?:[^/]+/)?(\w+)/(lora_a|lora_b|magnitude|scale)")
        for key, value in self.tensors.items():
            match = ours.fullmatch(key)
            site = match and self.family.site_of_label(match.group(2))
            if not match or site not in self.modules:
                _fail(f"no peft name for {key!r}")
            layer, weight = int(match.group(1)), match.group(3)
            module, _ = self.modules[site]
            units.setdefault((layer, module), {}).setdefault(site, {})[weight] = value
        return units

    # ------------------------------------------------------------------ LoRA
    def _lora(self):
        lora = LoRAConfig.from_config(self.method)
        rs = lora.use_rslora
        out, ranks, alphas = {}, {}, {}
        for (layer, module), sites in sorted(self._units().items()):
            order = [s for s in self.modules[next(iter(sites))][1] if s in sites]
            units = {s: lora.for_unit(f"{self.family.layer_name(layer)}/{s}") for s in order}
            rank = sum(u.rank for u in units.values())
            # One scaling for the module: the first unit's; the others' B carry the ratio.
            scaling = units[order[0]].alpha / (math.sqrt(units[order[0]].rank) if rs else units[order[0]].rank)
            alpha = scaling * (math.sqrt(rank) if rs else rank)
            fused = len(self.modules[order[0]][1]) > 1
            blocks_a, blocks_b = [], []
            widths = {s: sites[s]["lora_b"].shape[1] for s in order}
            for site, unit in units.items():
                a, b = sites[site]["lora_a"].astype(np.float64), sites[site]["lora_b"].astype(np.float64)
                ratio = (unit.alpha / (math.sqrt(unit.rank) if rs else unit.rank)) / scaling
                blocks_a.append(a.T)
                blocks_b.append(b.T * ratio)
            weight_a = np.concatenate(blocks_a, axis=0)
            if fused:
                weight_b = self._block_rows(module, order, widths, blocks_b, rank)
            else:
                weight_b = blocks_b[0]
            name = self._name(layer, module)
            out[f"base_model.model.{name}.lora_A.weight"] = weight_a
            out[f"base_model.model.{name}.lora_B.weight"] = weight_b
            if lora.use_dora:
                if fused and len(order) < len(self.modules[order[0]][1]):
                    _fail(f"DoRA on {[s for s in order]} of {module!r}, which also holds "
                          f"{[s for s in self.modules[order[0]][1] if s not in order]}: peft's magnitudes would "
                          "need those rows' norms too; adapt all of them (or use LoRA)")
                out[f"base_model.model.{name}.lora_magnitude_vector"] = np.concatenate(
                    [sites[s]["magnitude"].reshape(-1) for s in order])
            ranks[name], alphas[name] = rank, alpha
        return out, ranks, alphas

    def _block_rows(self, module, order, widths, blocks_b, rank):
        """A fused module's B: each site's rows, zero where a site has no unit."""
        all_sites = self.modules[order[0]][1]
        rows, column = [], 0
        blocks = dict(zip(order, blocks_b))
        for site in all_sites:
            width = widths.get(site) or self._site_width(site)
            block = np.zeros((width, rank))
            if site in blocks:
                r = blocks[site].shape[1]
                block[:, column:column + r] = blocks[site]
                column += r
            rows.append(block)
        return np.concatenate(rows, axis=0)

    def _site_width(self, site):
        """A site's output width: grouped-query attention's keys and values are narrower."""
        return self.kv_heads * self.head_dim if site in ("key", "value") else self.hidden_dim

    def _lora_config(self):
        tensors, ranks, alphas = self._lora()
        lora = LoRAConfig.from_config(self.method)
        config = {
            "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "use_rslora": lora.use_rslora,
            "use_dora": lora.use_dora, "bias": "none", "target_modules": _exact(ranks),
            "fan_in_fan_out": self.family.huggingface_fan_in_fan_out,
            "rank_pattern": {re.escape(n): r for n, r in ranks.items() if r != lora.rank},
            "alpha_pattern": {re.escape(n): a for n, a in alphas.items() if not math.isclose(a, lora.alpha)},
        }
        return config, tensors

    # ----------------------------------------------------------------- (IA)^3
    def _ia3_config(self):
        inputs = set(self.method.get("feedforward_modules") or ())
        out, names, feedforward = {}, [], []
        for (layer, module), sites in sorted(self._units().items()):
            all_sites = self.modules[next(iter(sites))][1]
            scaled_inputs = {s for s in sites if s in inputs}
            name = self._name(layer, module)
            names.append(name)
            if scaled_inputs:
                if len(all_sites) > 1:
                    _fail(f"(IA)^3 scales the input of {sorted(scaled_inputs)}, part of the fused {module!r}")
                out[f"base_model.model.{name}.ia3_l"] = sites[all_sites[0]]["scale"].reshape(1, -1)
                feedforward.append(name)
                continue
            scales = [sites[s]["scale"].reshape(-1) if s in sites else np.ones(self._site_width(s)) for s in all_sites]
            out[f"base_model.model.{name}.ia3_l"] = np.concatenate(scales).reshape(-1, 1)
        return {"target_modules": _exact(names), "feedforward_modules": _exact(feedforward) if feedforward else [],
                "fan_in_fan_out": self.family.huggingface_fan_in_fan_out}, out

    # --------------------------------------------------------- input-end units
    def _prompt_config(self):
        prompt = self.tensors[PROMPT_KEY]
        config = {"num_virtual_tokens": int(prompt.shape[0]), "token_dim": int(prompt.shape[1]),
                  "num_transformer_submodules": 1, "num_layers": self.layers,
                  "num_attention_heads": self.kv_heads, "prompt_tuning_init": "RANDOM"}
        return config, {"prompt_embeddings": prompt}

    def _prefix_config(self):
        keys, values = (self.tensors[k] for k in _PREFIX_KEYS)  # [layers, length, kv heads, head_dim]
        past = np.stack([keys, values], axis=1)  # [layers, 2, length, ...]
        rows = past.transpose(2, 0, 1, 3, 4).reshape(keys.shape[1], -1)  # peft's view: (layer, k/v, head, dim)
        config = {"num_virtual_tokens": int(keys.shape[1]), "num_layers": self.layers,
                  "num_attention_heads": self.kv_heads, "token_dim": self.kv_heads * self.head_dim,
                  "num_transformer_submodules": 1, "prefix_projection": False, "encoder_hidden_size": self.hidden_dim}
        return config, {"prompt_embeddings": rows}

    def config_and_tensors(self, base):
        config, tensors = {"LORA": self._lora_config, "IA3": self._ia3_config, "PROMPT_TUNING": self._prompt_config,
                           "PREFIX_TUNING": self._prefix_config}[self.kind]()
        config = {"peft_type": self.kind, "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
                  "inference_mode": True, **config}
        return config, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}


def _exact(names):
    """A regex matching exactly these modules (peft reads a string `target_modules` as a full match)."""
    return "(" + "|".join(re.escape(n) for n in names) + ")"


def write_causal_lm_folder(directory, method, tensors, family, cache_shape, hidden_dim, base):
    """Write a decoder adapter (its folder's `method` config and `tensors`) as a peft folder."""
    from safetensors.numpy import save

    config, weights = CausalLMWriter(method, tensors, family, cache_shape, hidden_dim).config_and_tensors(base)
    data = save(weights)

    def write(tmp):
        Path(tmp, "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        Path(tmp, "adapter_model.safetensors").write_bytes(data)

    return replace_folder(directory, write)
