"""AdapterHub (`adapters`) folders, read as keras-adapters adapters, and ours
written as AdapterHub folders (`write_adapterhub_folder`, the same table the
other way).

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
scaling those outputs. Its prefix tuning (`pool` of an embedding and an MLP,
or `flat` rows) computes each layer's keys and values in front of the input's;
they are computed once (float64) into our `PrefixConfig(reparameterize=False)`,
and ours are written as `prefix_tuning_flat`.

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
from keras_adapters.io.adapter_folder import replace_folder
from keras_adapters.io.torch_tensors import read_tensor_file
from keras_adapters.io.torch_tensors import save_torch_tensors
from keras_adapters.methods.base import PROJECTION_SITES
from keras_adapters.methods.prompt import PROMPT_KEY as OUR_PROMPT_KEY

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
#: The options a converted prefix must have, at these values; the tensors of its MLP.
PREFIX_FIXED = {"use_gating": False, "encoder_prefix": True, "leave_out": []}
PREFIX_MLP = ("wte.weight", "control_trans.0.weight", "control_trans.0.bias", "control_trans.2.weight", "control_trans.2.bias")
#: The options a converted LoRA / (IA)^3 must have, at these values.
LORA_FIXED = {"use_gating": False, "use_dora": False, "vera_d": None, "vera_b": None}


def _unit_site(method, side):
    """Our site of a bottleneck unit AdapterHub places after `side` ("feedforward",
    "self_attention"): beside the FFN for a parallel adapter, at the layer norm
    with `original_ln_before`, else at the dropout."""
    if method["method"] == "parallel":
        return "feedforward_intermediate_dense"
    return f"{side}_layer_norm" if method.get("original_ln_before") else f"{side}_dropout"


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
        tensors = read_tensor_file(self.directory, WEIGHT_FILES, self.source)
        self._prefix = self._prefix_pool(tensors)
        self._prompt = tensors.pop(_prompt_key(self.name), None)
        self._units, self._loras = self._parse(tensors) if self._prefix is None and self._prompt is None else ({}, {})
        if (self._prefix is not None or self._prompt is not None) and tensors:
            self._fail(f"tensors this library has no place for beside its prefix or prompt: {sorted(tensors)[:6]}; "
                       "nothing was loaded.")
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

    def _prefix_pool(self, tensors):
        """The prefix-tuning pool's tensors (`wte.weight`, `control_trans...`), taken
        out of `tensors`; AdapterHub saves one copy per layer and one at the model."""
        pattern = re.compile(
            rf"bert\.(?:encoder\.layer\.\d+\.attention\.self\.prefix_tuning\.pool|prefix_tuning)\.prefix_tunings\."
            rf"{re.escape(self.name)}\.self_prefix\.(.+)"
        )
        pool = {}
        for key in [k for k in tensors if pattern.fullmatch(k)]:
            part, value = pattern.fullmatch(key).group(1), tensors.pop(key)
            if part in pool and not np.array_equal(pool[part], value):
                self._fail(f"its copies of the prefix pool's {part!r} differ; one prefix per adapter converts.")
            pool[part] = value
        return pool or None

    def _method(self, bn):
        if bn.get("architecture") == "prefix_tuning" or self._prefix:
            return self._prefix_method(bn)
        if bn.get("architecture") == "prompt_tuning" or self._prompt is not None:
            return self._prompt_method(bn)
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

    def _prefix_method(self, bn):
        """Prefix tuning: the keys and values its pool computes (once, in float64)
        become our prefix (`reparameterize: false`), in front of every layer's."""
        if bn.get("architecture") != "prefix_tuning" or not self._prefix:
            self._fail("its config and its weights disagree on prefix tuning (one without the other).")
        off = {k: bn.get(k) for k, v in PREFIX_FIXED.items() if bn.get(k, v) != v}
        if off:
            self._fail(f"options {off} have no exact counterpart here (they must be {({k: PREFIX_FIXED[k] for k in off})}).")
        if not bn.get("flat") and str(bn.get("non_linearity", "tanh")).lower() != "tanh":
            self._fail(f"its prefix MLP computes {bn.get('non_linearity')!r}; AdapterHub's tanh MLP converts.")
        expected = {"control_trans"} if bn.get("flat") else set(PREFIX_MLP)
        if set(self._prefix) != expected:
            self._fail(f"its prefix pool holds {sorted(self._prefix)}; a {'flat' if bn.get('flat') else 'MLP'} prefix "
                       f"holds {sorted(expected)}.")
        return {"method": "prefix", "prefix_length": int(bn.get("prefix_length", 30)), "reparameterize": False}

    def _prompt_method(self, bn):
        """Prompt tuning with `combine: prefix_after_bos`: vectors of the embedding
        output right after [CLS], which is our `after_cls` placement."""
        if bn.get("architecture") != "prompt_tuning" or self._prompt is None:
            self._fail("its config and its weights disagree on prompt tuning (one without the other).")
        if bn.get("combine") != "prefix_after_bos":
            self._fail(
                f"its prompt is combined by {bn.get('combine')!r}: in front of [CLS], where its head then reads the "
                "first prompt vector instead of [CLS]; prompts combined 'prefix_after_bos' (right after [CLS]) "
                "convert (AdapterHub: PromptTuningConfig(combine='prefix_after_bos'))."
            )
        return {"method": "prompt", "num_virtual_tokens": int(self._prompt.shape[0]), "init": "random",
                "placement": "after_cls"}

    def _prefix_tensors(self, shapes):
        """Our per-layer keys and values from the pool's rows, whose columns are
        (layer, key or value, head, dim), as AdapterHub's `PrefixTuning.forward` views them."""
        pool = {k: v.astype(np.float64) for k, v in self._prefix.items()}
        if "control_trans" in pool:
            rows = pool["control_trans"]
        else:
            hidden = np.tanh(pool["wte.weight"] @ pool["control_trans.0.weight"].T + pool["control_trans.0.bias"])
            rows = hidden @ pool["control_trans.2.weight"].T + pool["control_trans.2.bias"]
        keys = sorted((k for k in shapes if k.endswith("/key/prefix")), key=lambda k: int(re.search(r"\d+", k).group()))
        length, heads, dim = shapes[keys[0]]
        if rows.size != length * len(keys) * 2 * heads * dim:
            self._fail(f"its prefix holds {rows.size} numbers; this model's {len(keys)} layers need {length} positions "
                       f"x {len(keys)} layers x 2 x {heads} heads x {dim} (another checkpoint?).")
        past = rows.reshape(length, len(keys), 2, heads, dim)
        out = {}
        for layer in range(len(keys)):
            out[bert.unit_key(layer, "key", "prefix")] = past[:, layer, 0]
            out[bert.unit_key(layer, "value", "prefix")] = past[:, layer, 1]
        return out

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
        out = (self._prefix_tensors(shapes) if self._prefix else {OUR_PROMPT_KEY: self._prompt} if self._prompt is not None
               else self._lora_tensors(shapes))
        for (layer, side), tensors in self._units.items():
            site = _unit_site(method, side)
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


# ------------------------------------------------------------------ writing
#: Keras activation names -> AdapterHub's.
HUB_ACTIVATIONS = {"relu": "relu", "silu": "swish", "swish": "swish", "gelu": "gelu", "tanh": "tanh", "sigmoid": "sigmoid"}
#: AdapterHub 1.3's `BnConfig` fields at the values every converted bottleneck has (as it saves them).
BOTTLENECK_DEFAULTS = {
    **FIXED, "dropout": 0.0, "init_weights": "bert", "init_weights_seed": None, "inv_adapter_reduction_factor": None,
    "is_parallel": False, "scaling": 1.0, "phm_dim": 4, "shared_W_phm": False, "shared_phm_rule": True,
    "factorized_phm_W": True, "factorized_phm_rule": False, "phm_c_init": "normal", "phm_init_range": 0.0001,
    "learn_phm": True, "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": True,
    "stochastic_depth": 0.0,
}
PREFIX_DEFAULTS = {**PREFIX_FIXED, "non_linearity": "tanh", "architecture": "prefix_tuning", "flat": True,
                   "cross_prefix": True, "dropout": 0.0,
                   "init_weights_seed": None, "shared_gating": True}
PROMPT_DEFAULTS = {"architecture": "prompt_tuning", "combine": "prefix_after_bos", "init_weights_seed": None,
                   "prompt_init": "random_uniform", "prompt_init_text": None}
LORA_DEFAULTS = {**LORA_FIXED, "architecture": "lora", "dropout": 0.0, "init_weights": "lora", "init_weights_seed": None,
                 "dtype": None, "composition_mode": "add"}
#: Our sites -> AdapterHub's LoRA switches (attention matrices by letter).
_HUB_LORA_SITES = {"query": "q", "key": "k", "value": "v", "feedforward_intermediate_dense": "intermediate_lora",
                   "feedforward_output_dense": "output_lora"}
_HUB_MODULES = {site: module for module, site in bert.HUGGINGFACE_SITES.items()}


def _prompt_key(name):
    return f"bert.prompt_tuning.prompt_tunings.{name}.prompt_embedding.weight"


def _refuse(message):
    raise AdapterFormatError(f"Cannot write an AdapterHub folder: {message}.")


def _hub_activation(name):
    if name not in HUB_ACTIVATIONS:
        _refuse(f"activation {name!r} has no AdapterHub name (it has {sorted(HUB_ACTIVATIONS)})")
    return HUB_ACTIVATIONS[name]


def _bottleneck_config(method, hidden, size):
    """AdapterHub's config for our Pfeiffer, Houlsby (frozen layer norms) or parallel adapter."""
    kind = method["method"]
    if kind == "houlsby" and method.get("train_layer_norms", True):
        _refuse("this Houlsby adapter trained its own copies of the layer norms, which AdapterHub's double_seq_bn "
                "keeps frozen (train with HoulsbyConfig(train_layer_norms=False) to export to AdapterHub)")
    if kind == "parallel" and not isinstance(method.get("scaling"), (int, float)):
        _refuse(f"a parallel adapter's scaling {method.get('scaling')!r} has no AdapterHub form (a number has)")
    factor = hidden / size
    if int(hidden // factor) != size:  # AdapterHub sizes the bottleneck as int(hidden // reduction_factor)
        factor = np.nextafter(factor, 0.0)
    return {
        **BOTTLENECK_DEFAULTS, "mh_adapter": kind == "houlsby", "output_adapter": True, "reduction_factor": float(factor),
        "non_linearity": _hub_activation(method["activation"]), "original_ln_before": bool(method.get("original_ln_before")),
        **({"is_parallel": True, "scaling": float(method["scaling"]), "init_weights": "mam_adapter"} if kind == "parallel" else {}),
    }


def _low_rank_config(method):
    """AdapterHub's LoRA (scaling alpha / r) or (IA)^3 (outputs scaled) config for ours."""
    sites = list(method["target_modules"])
    inputs = method.get("feedforward_modules") or []
    problem = (
        f"AdapterHub's LoRA adapts no {sorted(set(sites) - set(_HUB_LORA_SITES))} (it adapts {sorted(_HUB_LORA_SITES)})"
        if set(sites) - set(_HUB_LORA_SITES)
        else "an (IA)^3 adapter scaling a module's inputs (feedforward_modules) has no AdapterHub form (its (IA)^3 "
        "scales outputs: train with IA3Config(feedforward_modules=()))" if inputs
        else "rsLoRA, DoRA and per-unit ranks or alphas have no AdapterHub form"
        if any(method.get(k) for k in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern"))
        else None
    )
    if problem:
        _refuse(problem)
    switches = {"selfattn_lora": any(s in sites for s in ("query", "key", "value")),
                "attn_matrices": [_HUB_LORA_SITES[s] for s in ("query", "key", "value") if s in sites],
                "intermediate_lora": "feedforward_intermediate_dense" in sites,
                "output_lora": "feedforward_output_dense" in sites}
    if method["method"] == "ia3":
        return {**LORA_DEFAULTS, **switches, "r": 1, "alpha": 1, "composition_mode": "scale", "init_weights": "ia3"}
    return {**LORA_DEFAULTS, **switches, "r": int(method["rank"]), "alpha": method["alpha"],
            "dropout": float(method.get("dropout", 0.0))}


def _prefix_files(method, name, tensors, num_layers):
    """AdapterHub's flat prefix (`prefix_tuning_flat`: the keys and values as they
    are) for our prefix, and its pool as AdapterHub saves it (once per layer, once at the model)."""
    left = dict(tensors)
    try:
        past = np.stack([np.stack([left.pop(bert.unit_key(i, site, "prefix")) for site in ("key", "value")], 1)
                         for i in range(num_layers)], 1)  # [length, layers, 2, heads, dim]
    except KeyError:
        _refuse("a prefix on some layers only has no AdapterHub form (its prefix covers every layer)")
    pool = past.reshape(-1)
    places = [f"bert.encoder.layer.{i}.attention.self.prefix_tuning.pool" for i in range(num_layers)] + ["bert.prefix_tuning"]
    config = {**PREFIX_DEFAULTS, "prefix_length": int(past.shape[0]), "bottleneck_size": method.get("bottleneck_size", 512)}
    return config, {f"{p}.prefix_tunings.{name}.self_prefix.control_trans": pool for p in places}, left


def _prompt_files(method, name, tensors):
    """AdapterHub's prompt tuning combined `prefix_after_bos` for our `after_cls` prompt."""
    if method.get("placement") not in (None, "after_cls"):  # None: the family's default, after_cls for BERT
        _refuse("a prompt before [CLS] in the word vectors (placement 'before_cls', peft's) has no AdapterHub form; "
                "its prompts sit in the embedding output (placement 'after_cls' converts)")
    left = dict(tensors)
    prompt = left.pop(OUR_PROMPT_KEY)
    config = {**PROMPT_DEFAULTS, "prompt_length": int(prompt.shape[0])}
    return config, {_prompt_key(name): prompt}, left


def _head_config(task, head_type):
    if head_type is None:
        _refuse(f"its task is {task.get('type')!r}; single-text classifiers convert to AdapterHub")
    if task.get("pooling") not in ("cls", "cls_token"):
        _refuse(f"its head pools by {task.get('pooling')!r}; AdapterHub's classification head reads [CLS] "
                "(pooling='cls_token') or BERT's pooler (pooling='cls')")
    hidden = task.get("hidden_activation")
    names = task.get("class_names")
    return {"head_type": head_type, "num_labels": int(task["num_classes"]), "layers": 2 if hidden else 1,
            "activation_function": _hub_activation(hidden) if hidden else "tanh", "use_pooler": task["pooling"] == "cls",
            "bias": True, "dropout_prob": None, "label2id": {n: i for i, n in enumerate(names)} if names else None}


def _low_rank_tensors(method, name, left, layer):
    """AdapterHub's LoRA / (IA)^3 tensors of one layer, taken out of `left`."""
    out = {}
    for site in method["target_modules"]:
        module = f"bert.encoder.layer.{layer}.{_HUB_MODULES[site]}.loras.{name}"
        if method["method"] == "ia3":
            out[f"{module}.lora_B"] = left.pop(bert.unit_key(layer, site, "scale")).reshape(-1, 1)
            continue
        a, b = (left.pop(bert.unit_key(layer, site, part)) for part in ("lora_a", "lora_b"))
        out[f"{module}.lora_A"] = a.reshape(-1, a.shape[-1]).T
        out[f"{module}.lora_B"] = b.reshape(b.shape[0], -1).T
    return out


def _bottleneck_tensors(method, name, left, layer):
    """AdapterHub's bottleneck tensors of one layer (torch Linear: [out, in]), taken out of `left`."""
    out = {}
    sides = ("feedforward", "self_attention") if method["method"] == "houlsby" else ("feedforward",)
    for where, side in _SITES.items():
        if side not in sides:
            continue
        site = _unit_site(method, side)
        for part, hub in (("down", "adapter_down.0"), ("up", "adapter_up")):
            prefix = f"bert.encoder.layer.{layer}.{where}.adapters.{name}.{hub}"
            out[f"{prefix}.weight"] = left.pop(bert.unit_key(layer, site, f"{part}/kernel")).T
            out[f"{prefix}.bias"] = left.pop(bert.unit_key(layer, site, f"{part}/bias"))
    return out


def _unit_tensors(method, name, tensors, layers):
    """AdapterHub's adapter tensors, each of ours used once (a leftover is an error)."""
    per_layer = _low_rank_tensors if method["method"] in ("lora", "ia3") else _bottleneck_tensors
    left, out = dict(tensors), {}
    for layer in layers:
        out.update(per_layer(method, name, left, layer))
    return out, left


def _method_files(method, name, tensors, num_layers, hidden):
    """(AdapterHub's config, its adapter tensors, our tensors left over) for `method`."""
    kind = method.get("method")
    if kind == "prefix":
        return _prefix_files(method, name, tensors, num_layers)
    if kind == "prompt":
        return _prompt_files(method, name, tensors)
    if kind in ("pfeiffer", "houlsby", "parallel"):
        down = [v for k, v in tensors.items() if k.endswith("/down/kernel")]
        if not down:
            _refuse("its folder holds no bottleneck tensors (down/kernel)")
        hub = _bottleneck_config(method, hidden, int(down[0].shape[-1]))
    elif kind in ("lora", "ia3"):
        hub = _low_rank_config(method)
    else:
        _refuse(f"method {kind!r} has no AdapterHub form here (pfeiffer, houlsby, parallel, lora, ia3, prefix and "
                "prompt convert)")
    layers = sorted({int(m.group(1)) for m in map(re.compile(r"transformer_layer_(\d+)/").match, tensors) if m})
    hub["leave_out"] = [i for i in range(num_layers) if i not in layers]
    return (hub, *_unit_tensors(method, name, tensors, layers))


def adapterhub_files(config, tensors, num_layers, hidden, base, head_type):
    """(adapter_config.json, head_config.json, adapter tensors, head tensors) of
    our adapter (folder `config` and `tensors`) as AdapterHub 1.3 saves them;
    `head_type`: AdapterHub's for the adapter's task (`Task.adapterhub_head_type`)."""
    if "fusion" in config:
        _refuse("a fusion converts as its adapters, each on its own")
    name = config["name"]
    hub, adapter, left = _method_files(config.get("method") or {}, name, tensors, num_layers, hidden)
    head = _head_config(config["task"], head_type)
    linear = ("hidden", "logits") if head["layers"] == 2 else ("logits",)
    head_tensors = {f"heads.{name}.{index}.{part}": left.pop(f"{layer}/{'kernel' if part == 'weight' else 'bias'}").T
                    for layer, index in zip(linear, (1, 4)) for part in ("weight", "bias")}
    if left:
        _refuse(f"no AdapterHub name for {sorted(left)[:6]}")
    common = {"hidden_size": hidden, "model_class": "BertAdapterModel", "model_name": base, "model_type": "bert",
              "name": name, "version": "adapters.1.3.0"}
    return {"config": hub, **common}, {"config": head, **common}, adapter, head_tensors


def write_adapterhub_folder(directory, config, tensors, num_layers, hidden, base, head_type):
    """Write our adapter as an AdapterHub folder that `model.load_adapter(directory)`
    loads, head included (`.bin` files: what AdapterHub reads by default)."""
    adapter_config, head_config, adapter, head = adapterhub_files(config, tensors, num_layers, hidden, base, head_type)

    def fill(folder):
        save_torch_tensors(Path(folder) / WEIGHT_FILES[1], adapter)
        save_torch_tensors(Path(folder) / HEAD_WEIGHT_FILES[1], head)
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(adapter_config, indent=2) + "\n")
        (Path(folder) / HEAD_CONFIG_FILE).write_text(json.dumps(head_config, indent=2) + "\n")

    return replace_folder(directory, fill)
