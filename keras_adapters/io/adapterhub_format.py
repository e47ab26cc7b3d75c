"""AdapterHub (`adapters`) folders, read as keras-adapters adapters.

`model.save_adapter(DIR, name)` in AdapterHub writes `adapter_config.json`
(`{"config": {...}, "name": ..., "model_type": ..., "version": "adapters..."}`),
`pytorch_adapter.bin` (or `adapter.safetensors`) and, with its head,
`head_config.json` and `pytorch_model_head.bin` (or `model_head.safetensors`).
Bottleneck adapters map onto ours exactly (AdapterHub 1.3's forward pass,
`h` a sublayer's output, `x` its input, `LN` the block's own layer norm):

| AdapterHub | computes | here |
| --- | --- | --- |
| `seq_bn` (`original_ln_before`) | `LN(h + up(f(down(LN(h + x)))) + x)` after the FFN | `PfeifferConfig(original_ln_before=True)` |
| `double_seq_bn` | `LN(h + up(f(down(h))) + x)` after attention and the FFN | `HoulsbyConfig(train_layer_norms=False)` |
| `par_bn` (`is_parallel`) | `LN(h + s * up(f(down(x))) + x)` beside the FFN | `ParallelAdapterConfig(scaling=s)` |

Its LoRA (`LoRAConfig`, `composition_mode: add`: `x A^T B^T alpha / r` added to
a projection's output) becomes our `LoRAConfig`, and its (IA)^3 (`IA3Config`,
`composition_mode: scale`: the output times `alpha * lora_B`) our `IA3Config`
scaling those outputs.

Its classification head reads the `[CLS]` token's last hidden state
(`use_pooler: false`): dropout, Linear(d, d), activation, dropout,
Linear(d, classes) -> `ClassificationHead(pooling="cls_token",
hidden_activation=...)`. Any other option (gating, adapter layer norms,
PHM layers, scaling on a sequential adapter, ...) is refused by name.
`.bin` files are read by `io.torch_tensors` (no pickle runs).
"""

import json
import re
from pathlib import Path

import numpy as np

from keras_adapters.backbones import bert
from keras_adapters.io.adapter_folder import AdapterFormatError
from keras_adapters.io.torch_tensors import read_tensor_file
from keras_adapters.methods.base import PROJECTION_SITES

CONFIG_FILE = "adapter_config.json"
HEAD_CONFIG_FILE = "head_config.json"
WEIGHT_FILES = ("adapter.safetensors", "pytorch_adapter.bin")
HEAD_WEIGHT_FILES = ("model_head.safetensors", "pytorch_model_head.bin")
#: AdapterHub's (transformers') activation names -> Keras'.
ACTIVATIONS = {"relu": "relu", "swish": "silu", "silu": "silu", "gelu": "gelu", "tanh": "tanh", "sigmoid": "sigmoid"}
#: The options a converted bottleneck must have, at these values (AdapterHub's names).
FIXED = {
    "ln_before": False, "ln_after": False, "use_gating": False, "phm_layer": False, "adapter_residual_before_ln": False,
    "residual_before_ln": True, "original_ln_after": True, "inv_adapter": None, "cross_adapter": False,
}
_SITES = {"output": "feedforward", "attention.output": "self_attention"}
#: The modules AdapterHub's LoRA and (IA)^3 adapt in a BERT layer (`attn_matrices`, `intermediate_lora`, `output_lora`).
_LORA_MODULES = ("attention.self.query", "attention.self.key", "attention.self.value", "intermediate.dense", "output.dense")
#: The options a converted LoRA / (IA)^3 must have, at these values.
LORA_FIXED = {"use_gating": False, "use_dora": False, "vera_d": None, "vera_b": None}


def is_adapterhub_folder(directory):
    """Whether `directory` holds an AdapterHub adapter (its `adapter_config.json`
    wraps the method's fields in `config` and names the adapter)."""
    try:
        data = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("config"), dict) and "name" in data and "peft_type" not in data


class AdapterHubFolder:
    """An AdapterHub folder as our adapter config and tensors.

    Attributes:
        config: an adapter-folder config (`name`, `method`, `task`), no backbone section.
        base: the `model_name` AdapterHub recorded.
    """

    def __init__(self, directory, head_tasks):
        """`head_tasks`: {AdapterHub head_type: our task name} for the heads that convert."""
        self.directory = Path(directory)
        self._head_tasks = head_tasks
        self.source = str(directory)
        data = json.loads((self.directory / CONFIG_FILE).read_text(encoding="utf-8"))
        self.name, self.base, bn = data["name"], data.get("model_name"), data["config"]
        if data.get("model_type") not in (None, "bert"):
            self._fail(f"it adapts a {data.get('model_type')!r} model; BERT-family models convert here.")
        self._units, self._loras = self._parse(read_tensor_file(self.directory, WEIGHT_FILES, self.source))
        self._head_config, self._head = self._read_head()
        self.config = {"name": self.name, "method": self._method(bn), "task": self._task()}

    def _fail(self, message):
        raise AdapterFormatError(f"{self.source}: {message}")

    def _parse(self, tensors):
        pattern = re.compile(
            rf"bert\.encoder\.layer\.(\d+)\.(output|attention\.output)\.adapters\.{re.escape(self.name)}\."
            r"(adapter_down\.0|adapter_up)\.(weight|bias)"
        )
        low_rank = re.compile(
            rf"bert\.encoder\.layer\.(\d+)\.({'|'.join(map(re.escape, _LORA_MODULES))})\.loras\.{re.escape(self.name)}\."
            r"(lora_A|lora_B)"
        )
        units, loras, unknown = {}, {}, []
        for key, value in tensors.items():
            match, lora = pattern.fullmatch(key), low_rank.fullmatch(key)
            if match:
                layer, where, part, kind = match.groups()
                units.setdefault((int(layer), _SITES[where]), {})[f"{'down' if 'down' in part else 'up'}/{kind}"] = value
            elif lora:
                layer, module, part = lora.groups()
                loras.setdefault((int(layer), bert.HUGGINGFACE_SITES[module]), {})[part] = value
            else:
                unknown.append(key)
        if unknown:
            self._fail(f"tensors this library has no place for: {sorted(unknown)[:6]}; nothing was loaded.")
        if not units and not loras:
            self._fail("no adapter tensors in its weights file.")
        if units and loras:
            self._fail("it holds bottleneck and LoRA tensors at once (a ConfigUnion); convert one method per adapter.")
        return units, loras

    def _method(self, bn):
        kind = "LoRA/(IA)^3" if self._loras else "bottleneck"
        expected = "LoRA/(IA)^3" if bn.get("architecture") == "lora" else "bottleneck"
        if bn.get("architecture") in (None, "bottleneck", "lora") and kind != expected:
            self._fail(f"its config is a {expected} adapter ({bn.get('architecture')!r}) but its weights are {kind} tensors.")
        if bn.get("architecture") == "lora":
            return self._lora_method(bn)
        if bn.get("architecture") not in (None, "bottleneck"):
            self._fail(f"AdapterHub {bn['architecture']!r} adapters cannot be read yet (bottleneck and LoRA/(IA)^3 adapters can).")
        off = {k: bn.get(k) for k, v in FIXED.items() if bn.get(k, v) != v}
        if off:
            self._fail(f"options {off} have no exact counterpart here (they must be {({k: FIXED[k] for k in off})}).")
        activation = ACTIVATIONS.get(str(bn.get("non_linearity", "relu")).lower())
        if activation is None:
            self._fail(f"non_linearity {bn.get('non_linearity')!r} is not one of {sorted(ACTIVATIONS)}.")
        sides = sorted({side for _, side in self._units})
        sizes = {t["down/weight"].shape[0] for t in self._units.values()}
        if len(sizes) != 1:
            self._fail(f"bottleneck sizes {sorted(sizes)} differ between layers or sides.")
        common = {"bottleneck_size": int(sizes.pop()), "activation": activation, "target_layers": self._layers(),
                  "init": "zeros"}
        scaling = bn.get("scaling", 1.0)
        if bn.get("is_parallel"):
            if sides != ["feedforward"] or bn.get("original_ln_before") or not isinstance(scaling, (int, float)):
                self._fail("a parallel adapter converts beside the feed-forward block only, with a number as scaling.")
            return {"method": "parallel", "scaling": float(scaling), **common}
        if scaling != 1.0:
            self._fail(f"scaling {scaling!r} on a sequential adapter has no counterpart here (1.0 has).")
        normed = bool(bn.get("original_ln_before"))
        if sides == ["feedforward"]:
            return {"method": "pfeiffer", "original_ln_before": normed, **common}
        if sides == ["feedforward", "self_attention"]:
            return {"method": "houlsby", "original_ln_before": normed, "train_layer_norms": False, **common}
        self._fail("an adapter after attention only has no counterpart here.")

    def _lora_method(self, bn):
        """LoRA (`composition_mode: add`, scaling `alpha / r`) or (IA)^3 (`scale`:
        each module's output times `alpha * lora_B`)."""
        off = {k: bn.get(k) for k, v in LORA_FIXED.items() if bn.get(k, v) != v}
        if off:
            self._fail(f"options {off} have no exact counterpart here (they must be {({k: LORA_FIXED[k] for k in off})}).")
        by_layer = {}
        for layer, site in self._loras:
            by_layer.setdefault(layer, set()).add(site)
        if len({frozenset(s) for s in by_layer.values()}) != 1:
            self._fail(f"its layers adapt different modules ({by_layer}); one adapter here adapts the same ones in every layer.")
        sites = [s for s in PROJECTION_SITES if s in next(iter(by_layer.values()))]
        common = {"target_modules": sites, "target_layers": self._layers()}
        mode = bn.get("composition_mode", "add")
        if mode not in ("add", "scale"):
            self._fail(f"composition_mode {mode!r}: 'add' (LoRA) and 'scale' ((IA)^3) convert.")
        if mode == "scale":
            if any(set(t) != {"lora_B"} or t["lora_B"].ndim != 2 or t["lora_B"].shape[1] != 1 for t in self._loras.values()):
                self._fail("an (IA)^3 adapter holds one lora_B vector [out, 1] per module; its tensors differ.")
            self._scale = float(bn.get("alpha", 1))  # AdapterHub's IA3Config default
            return {"method": "ia3", "feedforward_modules": [], **common}
        ranks = {t["lora_A"].shape[0] for t in self._loras.values() if "lora_A" in t}
        if len(ranks) != 1 or any(set(t) != {"lora_A", "lora_B"} for t in self._loras.values()):
            self._fail(f"its LoRA modules need lora_A and lora_B of one rank (ranks {sorted(ranks)}).")
        return {"method": "lora", "rank": int(ranks.pop()), "alpha": float(bn.get("alpha", 8)),
                "dropout": float(bn.get("dropout") or 0.0), **common}

    def _layers(self):
        layers = sorted({layer for layer, _ in (self._units or self._loras)})
        return "(" + "|".join(bert.encoder_name(i) for i in layers) + ")"

    def _read_head(self):
        path = self.directory / HEAD_CONFIG_FILE
        if not path.is_file():
            self._fail(
                f"it was saved without its head (no {HEAD_CONFIG_FILE}); every adapter here carries its head: "
                "save it in AdapterHub with its prediction head (model.save_adapter(DIR, name, with_head=True))."
            )
        head = json.loads(path.read_text(encoding="utf-8"))["config"]
        return head, read_tensor_file(self.directory, HEAD_WEIGHT_FILES, self.source)

    def _task(self):
        head = self._head_config
        kind = head.get("head_type")
        if kind not in self._head_tasks:
            self._fail(f"its head is {kind!r}; {sorted(self._head_tasks)} heads convert.")
        layers = head.get("layers", 1)
        activation = ACTIVATIONS.get(str(head.get("activation_function")).lower())
        if layers not in (1, 2) or (layers == 2 and activation is None):
            self._fail(f"a head of {layers} layers with activation {head.get('activation_function')!r} has no counterpart here.")
        names = sorted(head.get("label2id") or {}, key=lambda n: head["label2id"][n]) or None
        task = {"type": self._head_tasks[kind], "num_classes": int(head["num_labels"]), "class_names": names,
                "pooling": "cls" if head.get("use_pooler") else "cls_token", "dropout": 0.1}
        if layers == 2:
            task["hidden_activation"] = activation
        return task

    def _lora_tensors(self, shapes):
        out = {}
        for (layer, site), tensors in self._loras.items():
            if self.config["method"]["method"] == "ia3":
                key = bert.unit_key(layer, site, "scale")
                scale = tensors["lora_B"][:, 0] * self._scale
                out[key] = scale.reshape(shapes.get(key, scale.shape))  # laid out as the kernel's output dims
            else:  # torch's lora_A [r, in] and lora_B [out, r] are our kernels' transposes
                out[bert.unit_key(layer, site, "lora_a")] = tensors["lora_A"].T
                out[bert.unit_key(layer, site, "lora_b")] = tensors["lora_B"].T
        return out

    def tensors(self, shapes):
        """{our key: array} for the model's expected `shapes` ({key: shape})."""
        method = self.config["method"]
        out = self._lora_tensors(shapes)
        for (layer, side), tensors in self._units.items():
            site = {"feedforward": "feedforward_dropout", "self_attention": "self_attention_dropout"}[side]
            if method["method"] == "parallel":
                site = "feedforward_intermediate_dense"
            elif method.get("original_ln_before"):
                site = site.replace("dropout", "layer_norm")
            for name, value in tensors.items():
                key = bert.unit_key(layer, site, name.replace("weight", "kernel"))
                out[key] = value.T if value.ndim == 2 else value  # torch Linear weights are [out, in]
        prefix = f"heads.{self.name}."
        linear = sorted({k[len(prefix):].split(".")[0] for k in self._head if k.startswith(prefix)}, key=int)
        unknown = [k for k in self._head if not k.startswith(prefix)]
        if unknown or len(linear) != (2 if "hidden_activation" in self.config["task"] else 1):
            self._fail(f"its head's tensors {sorted(self._head)} do not fit its head_config.json.")
        for name, index in zip(("hidden", "logits")[-len(linear):], linear):
            out[f"{name}/kernel"] = self._head[f"{prefix}{index}.weight"].T
            bias = self._head.get(f"{prefix}{index}.bias")
            out[f"{name}/bias"] = bias if bias is not None else np.zeros(shapes.get(f"{name}/bias", (0,)), np.float32)
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}

