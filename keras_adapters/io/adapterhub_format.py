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
        self._units = self._parse(read_tensor_file(self.directory, WEIGHT_FILES, self.source))
        self._head_config, self._head = self._read_head()
        self.config = {"name": self.name, "method": self._method(bn), "task": self._task()}

    def _fail(self, message):
        raise AdapterFormatError(f"{self.source}: {message}")

    def _parse(self, tensors):
        pattern = re.compile(
            rf"bert\.encoder\.layer\.(\d+)\.(output|attention\.output)\.adapters\.{re.escape(self.name)}\."
            r"(adapter_down\.0|adapter_up)\.(weight|bias)"
        )
        units, unknown = {}, []
        for key, value in tensors.items():
            match = pattern.fullmatch(key)
            if match is None:
                unknown.append(key)
                continue
            layer, where, part, kind = match.groups()
            units.setdefault((int(layer), _SITES[where]), {})[f"{'down' if 'down' in part else 'up'}/{kind}"] = value
        if unknown:
            self._fail(f"tensors this library has no place for: {sorted(unknown)[:6]}; nothing was loaded.")
        if not units:
            self._fail("no adapter tensors in its weights file.")
        return units

    def _method(self, bn):
        if bn.get("architecture") not in (None, "bottleneck"):
            self._fail(f"AdapterHub {bn['architecture']!r} adapters cannot be read yet (bottleneck adapters can).")
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

    def _layers(self):
        layers = sorted({layer for layer, _ in self._units})
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

    def tensors(self, shapes):
        """{our key: array} for the model's expected `shapes` ({key: shape})."""
        method = self.config["method"]
        out = {}
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

