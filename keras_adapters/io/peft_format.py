"""Hugging Face peft adapter folders, read as keras-adapters adapters.

A peft folder holds `adapter_config.json` (with `peft_type`) and
`adapter_model.safetensors` (or `adapter_model.bin`), keyed by the PyTorch
module each tensor belongs to
(`base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`).
For a BERT sequence classifier (`task_type: SEQ_CLS`) the classifier layer
peft saves (`modules_to_save`) becomes the adapter's head, on BERT's pooled
`[CLS]` output as `BertForSequenceClassification` computes it.

Which layers and projections an adapter covers is read from the tensors, not
from `target_modules` patterns; every tensor must map to a weight here, and
what this library cannot compute identically (trained biases, other saved
modules) is refused with its name, never dropped. Per-module ranks and alphas
(`rank_pattern`, `alpha_pattern`) become the same options of `LoRAConfig`,
one exact unit name per module that differs. A `PROMPT_TUNING` folder's
`prompt_embeddings` become a `PromptConfig(placement="before_cls")`, peft's
placement. A causal LM's `PREFIX_TUNING` folder (the keys and values peft
hands it as `past_key_values`) becomes a `PrefixConfig` at the front of the
KV cache; a BERT classifier's is refused with the reason (see `_NOT_READ`).
"""

import json
import math
import re
from pathlib import Path

import numpy as np

from keras_adapters.backbones import bert
from keras_adapters.io.adapter_folder import AdapterFormatError
from keras_adapters.io.adapter_folder import replace_folder
from keras_adapters.io.torch_tensors import read_tensor_file
from keras_adapters.methods.base import LINEAR_SITES
from keras_adapters.methods.base import pattern_value
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.prompt import PROMPT_KEY as OUR_PROMPT_KEY

CONFIG_FILE = "adapter_config.json"
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def _layer_key(family):
    """A regex of peft's key of a layer tensor: (module, layer index, module within the layer, tensor)."""
    return re.compile(
        rf"base_model\.model\.((?:{family.huggingface_layers})\.(\d+)\.(.+))\."
        r"(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|ia3_l)"
    )


# peft saves a prompt-learning model's classifier without the inner ".model".
_HEAD_KEY = re.compile(r"base_model\.(?:model\.)?(classifier|score)\.(weight|bias)")
# BERT's pooler: LoRA on it (peft's "all-linear" includes it) or a trained copy (modules_to_save).
_POOLER_KEY = re.compile(r"base_model\.(?:model\.)?bert\.pooler\.dense\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector|weight|bias)")
PROMPT_KEY = "prompt_embeddings"
#: Our keys of a decoder prefix's keys and values (its unit at the embedding output).
_OUR_PREFIX_KEYS = ("embeddings/embedding_output/keys", "embeddings/embedding_output/values")


def is_peft_folder(directory):
    """Whether `directory` holds a peft adapter (`adapter_config.json` with `peft_type`)."""
    path = Path(directory) / CONFIG_FILE
    try:
        return "peft_type" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


def is_causal_lm_folder(directory):
    """Whether `directory` holds a peft adapter of a causal LM (`task_type: CAUSAL_LM`)."""
    return is_peft_folder(directory) and PeftFolder.task_type_of(directory) == "CAUSAL_LM"


class PeftFolder:
    """A peft adapter folder, as our adapter config and tensors.

    Attributes:
        config: an adapter-folder config (`method`, `task`, `name`), no backbone section.
        base: the peft config's `base_model_name_or_path`.
    """

    def __init__(self, directory, task_types, base_pooler=None, family=bert.FAMILY, head=True):
        """`task_types`: {peft task_type: our task name} for the tasks that convert;
        `base_pooler`: a function giving the base model's pooler `(kernel [in, out],
        bias)`, needed when the adapter changes the pooler; `family`: the
        backbone family (where its Hugging Face layers keep their modules);
        `head=False` for adapters without a head of their own (causal LMs:
        the language-model head is the checkpoint's)."""
        self.source = str(directory)
        self._family, self._with_head = family, head
        self._base_pooler = base_pooler
        self._task_types = task_types
        self.peft = json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8"))
        self.base = self.peft.get("base_model_name_or_path")
        kind = self.peft["peft_type"]
        if kind in _NOT_READ and head:  # a causal LM's prefix is its KV cache's front: read below
            self._fail(f"peft type {kind!r}: {_NOT_READ[kind]}")
        self._raw = read_tensor_file(Path(directory), WEIGHT_FILES, self.source)
        self._units, head = self._parse()
        self._head = head
        readers = {"LORA": self._lora, "IA3": self._ia3, "PROMPT_TUNING": self._prompt, "PREFIX_TUNING": self._prefix}
        if kind not in readers:
            raise AdapterFormatError(
                f"{self.source}: peft type {kind!r} cannot be read yet (this keras-adapters reads "
                f"{sorted(readers)} adapters of BERT-family sequence classifiers and Llama-, GPT-2- and Gemma 3-family "
                "causal LMs)."
            )
        task = {"type": task_types[self.peft["task_type"]]}
        if head:
            task.update(num_classes=int(head["weight"].shape[0]), pooling="cls",
                        dropout=0.1)  # BERT's hidden_dropout_prob, which its classifier uses
        if self._pooler:  # the adapter's own pooler: our head's hidden layer on the [CLS] token, as BERT's
            task.update(pooling="cls_token", hidden_activation="tanh")
        self.config = {"name": None, "method": readers[kind](), "task": task}

    @staticmethod
    def task_type_of(directory):
        """The `task_type` a peft folder names (`None` if it names none)."""
        return json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8")).get("task_type")

    @staticmethod
    def base_of(directory):
        """The `base_model_name_or_path` a peft folder names (None if it names none).

        Raises:
            AdapterFormatError: `directory` is not a peft folder.
        """
        if not is_peft_folder(directory):
            raise AdapterFormatError(
                f"{directory} is not a peft adapter folder (no {CONFIG_FILE} with a peft_type) nor an "
                "AdapterHub one; convert reads those (our own folders convert with --to peft)."
            )
        return json.loads((Path(directory) / CONFIG_FILE).read_text(encoding="utf-8")).get("base_model_name_or_path")

    def _fail(self, message):
        raise AdapterFormatError(f"{self.source}: {message}")

    def _parse(self):
        units, head, unknown = {}, {}, []
        self._modules = {}  # (layer, site) -> the module name peft matched its patterns against
        self._pooler = {}
        layer_key, sites = _layer_key(self._family), self._family.huggingface_sites
        for key, value in self._raw.items():
            layer, head_match, pooler = layer_key.fullmatch(key), _HEAD_KEY.fullmatch(key), _POOLER_KEY.fullmatch(key)
            if pooler:
                self._pooler[pooler.group(1)] = value
            elif layer and layer.group(3) in sites:
                for site, part in _split_fused(sites[layer.group(3)], layer.group(4), value):
                    unit = (int(layer.group(2)), site)
                    units.setdefault(unit, {})[layer.group(4)] = part
                    self._modules[unit] = layer.group(1)
            elif head_match:
                head[head_match.group(2)] = value
            elif key == PROMPT_KEY and self.peft.get("peft_type") in ("PROMPT_TUNING", "PREFIX_TUNING"):
                units["prompt"] = {key: value}
            else:
                unknown.append(key)
        if unknown:
            self._fail(
                f"tensors this library has no place for: {sorted(unknown)[:6]}"
                f"{'...' if len(unknown) > 6 else ''} (peft's pooler, embeddings or other saved modules "
                "are not read yet); nothing was loaded."
            )
        task = self.peft.get("task_type")
        if not self._with_head and (task not in self._task_types or head):
            self._fail(f"task_type {task!r} with head tensors {sorted(head)}: this model loads task_type "
                       f"{sorted(self._task_types)} adapters, which keep no head of their own.")
        if self._with_head and (task not in self._task_types or set(head) != {"weight", "bias"}):
            self._fail(
                f"task_type {task!r} with head tensors {sorted(head)}: only adapters with a head convert (task_type "
                f"{sorted(self._task_types)}, whose classifier peft saves), since every adapter here carries its head."
            )
        others = sorted(set(self.peft.get("modules_to_save") or []) - {"classifier", "score", "pooler"})
        if others:
            self._fail(f"modules_to_save {others} would need their trained copies of base modules; not supported.")
        self._check_pooler()
        return units, head

    def _check_pooler(self):
        names = set(self._pooler)
        if names and self.peft.get("peft_type") == "PROMPT_TUNING":
            self._fail(
                "a prompt-tuning adapter with its own pooler: BERT's pooler reads the first virtual token, which "
                "a head's own pooler here cannot; not supported."
            )
        lora = _lora_tensor_names(self.peft.get("use_dora"))
        if names and names not in ({"weight", "bias"}, lora):
            self._fail(f"its pooler tensors {sorted(names)} are neither a trained copy (weight, bias) nor {sorted(lora)}.")
        if names and self._base_pooler is None and names != {"weight", "bias"}:
            self._fail("it adapts BERT's pooler, whose base weights this reader was not given.")

    def _pooler_weights(self):
        """The adapter's pooler as (kernel [in, out], bias): the saved copy, or
        the base pooler with the LoRA/DoRA update folded in (float64)."""
        saved = self._pooler
        if "weight" in saved:
            return saved["weight"].T, saved["bias"]
        kernel, bias = (np.asarray(t, np.float64) for t in self._base_pooler())
        weight = kernel.T  # torch layout [out, in]
        rank, alpha = saved["lora_A.weight"].shape[0], _peft_pattern_value(self.peft.get("alpha_pattern"), "bert.pooler.dense", self.peft["lora_alpha"])
        scaling = alpha / (math.sqrt(rank) if self.peft.get("use_rslora") else rank)
        weight = weight + scaling * saved["lora_B.weight"].astype(np.float64) @ saved["lora_A.weight"].astype(np.float64)
        if "lora_magnitude_vector" in saved:  # DoRA: magnitude / ||W + sBA|| per output row
            weight = weight * (saved["lora_magnitude_vector"] / np.linalg.norm(weight, axis=1))[:, None]
        return weight.T, bias

    def _layers_and_sites(self, allowed):
        """(target_layers regex, sites in our order); every layer must have the same sites."""
        by_layer = {}
        for layer, site in self._units:
            by_layer.setdefault(layer, set()).add(site)
        if not by_layer:
            self._fail("no adapter tensors in the weights file.")
        site_sets = {frozenset(s) for s in by_layer.values()}
        if len(site_sets) > 1:
            self._fail(f"its layers adapt different projections ({by_layer}); one adapter here adapts the same ones in every layer it covers.")
        sites = tuple(s for s in LINEAR_SITES if s in next(iter(site_sets)))
        bad = [s for s in sites if s not in allowed]
        if bad:
            self._fail(f"adapts {bad}, which this method cannot adapt here (it can adapt {list(allowed)}).")
        if self.peft.get("layers_to_transform") is None:  # peft adapted every layer
            return ".*", sites
        return "(" + "|".join(self._family.layer_name(i) for i in sorted(by_layer)) + ")", sites

    def _lora(self):
        p = self.peft
        for flag, ok in (("bias", "none"), ("lora_bias", False), ("layer_replication", None), ("use_qalora", False)):
            if p.get(flag, ok) not in (ok, None, False, "none"):
                self._fail(f"{flag}={p.get(flag)!r}: trained biases or replicated layers are not supported.")
        dora = bool(p.get("use_dora"))
        needed = _lora_tensor_names(dora)
        for (layer, site), tensors in self._units.items():
            if set(tensors) != needed:
                self._fail(f"layer {layer} {site} has {sorted(tensors)}, expected {sorted(needed)}.")
        target_layers, sites = self._layers_and_sites(LINEAR_SITES)
        # Each module's rank is its tensors'; its alpha is what peft's alpha_pattern gave it.
        ranks = {unit: int(t["lora_A.weight"].shape[0]) for unit, t in self._units.items()}
        alphas = {unit: float(_peft_pattern_value(p.get("alpha_pattern"), self._modules[unit], p["lora_alpha"])) for unit in ranks}
        rank = p["r"] if p.get("r") in ranks.values() else max(set(ranks.values()), key=list(ranks.values()).count)
        return {
            "method": "lora",
            "rank": int(rank),
            "alpha": float(p["lora_alpha"]),
            "rank_pattern": _unit_patterns(self._family, ranks, rank),
            "alpha_pattern": _unit_patterns(self._family, alphas, float(p["lora_alpha"])),
            "dropout": float(p.get("lora_dropout") or 0.0),
            "target_modules": list(sites),
            "use_rslora": bool(p.get("use_rslora")),
            "use_dora": dora,
            "target_layers": target_layers,
        }

    def _prompt(self):
        p = self.peft
        prompt = self._units.get("prompt", {}).get(PROMPT_KEY)
        if prompt is None or set(self._units) != {"prompt"}:
            self._fail(f"a PROMPT_TUNING folder holds '{PROMPT_KEY}' (and a classifier's head); found {sorted(self._raw)}.")
        if (p.get("num_transformer_submodules") or 1) != 1 or prompt.shape[0] != p.get("num_virtual_tokens", prompt.shape[0]):
            self._fail(
                f"{PROMPT_KEY} has shape {tuple(prompt.shape)} for num_virtual_tokens={p.get('num_virtual_tokens')} and "
                f"num_transformer_submodules={p.get('num_transformer_submodules')}: one prompt per virtual token expected."
            )
        # peft puts word vectors before [CLS] (PromptConfig's "before_cls"); the vectors are read, so no init is replayed.
        return {"method": "prompt", "num_virtual_tokens": int(prompt.shape[0]), "init": "random", "placement": "before_cls"}

    def _prefix(self):
        """A causal LM's prefix: peft saves the keys and values it hands the
        model as `past_key_values` (the MLP's output when it trained through
        one), `[virtual tokens, layers x 2 x kv heads x head_dim]`."""
        prompt = self._units.get("prompt", {}).get(PROMPT_KEY)
        if prompt is None or set(self._units) != {"prompt"} or prompt.ndim != 2:
            self._fail(f"a PREFIX_TUNING folder holds '{PROMPT_KEY}' [virtual tokens, layers x 2 x kv heads x head_dim]; "
                       f"found {sorted(self._raw)}.")
        return {"method": "prefix", "prefix_length": int(prompt.shape[0]), "reparameterize": False}

    def _prefix_tensors(self, shapes):
        """Our prefix's keys and values `[layers, length, kv heads, head_dim]` from peft's rows, whose
        columns are (layer, key or value, head, dim) in that order (peft's `get_prompt`)."""
        prompt = self._units["prompt"][PROMPT_KEY]
        layers, length, heads, dim = shapes[_OUR_PREFIX_KEYS[0]]
        if prompt.shape != (length, layers * 2 * heads * dim):
            self._fail(f"{PROMPT_KEY} has shape {tuple(prompt.shape)}; this model's cache needs {length} rows of "
                       f"{layers} layers x 2 x {heads} heads x {dim} = {layers * 2 * heads * dim} (another checkpoint?).")
        past = prompt.reshape(length, layers, 2, heads, dim).transpose(1, 2, 0, 3, 4)
        return {_OUR_PREFIX_KEYS[0]: past[:, 0], _OUR_PREFIX_KEYS[1]: past[:, 1]}

    def _ia3(self):
        target_layers, sites = self._layers_and_sites(LINEAR_SITES)
        # peft scales a feed-forward module's input ((1, in) vectors), any other module's output.
        inputs = {site for (_, site), t in self._units.items() if t["ia3_l"].shape[0] == 1}
        return {
            "method": "ia3",
            "target_modules": list(sites),
            "feedforward_modules": [s for s in sites if s in inputs],
            "target_layers": target_layers,
        }

    def tensors(self, shapes):
        """{our key: array} for the model's expected `shapes` ({key: shape})."""
        out = {"logits/kernel": self._head["weight"].T, "logits/bias": self._head["bias"]} if self._head else {}
        if self._pooler:
            out["hidden/kernel"], out["hidden/bias"] = self._pooler_weights()
        names = {"lora_A.weight": "lora_a", "lora_B.weight": "lora_b", "lora_magnitude_vector": "magnitude", "ia3_l": "scale"}
        if "prompt" in self._units and self.peft["peft_type"] == "PREFIX_TUNING":
            out.update(self._prefix_tensors(shapes))
            return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
        if "prompt" in self._units:
            out[OUR_PROMPT_KEY] = self._units["prompt"][PROMPT_KEY]
            return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}
        for (layer, site), tensors in self._units.items():
            for peft_name, value in tensors.items():
                key = _our_key(shapes, self._family, layer, site, names[peft_name])
                if peft_name.startswith("lora_"):  # torch Linear weights are [out, in]; our kernels [in, out]
                    value = value.T if value.ndim == 2 else value
                elif key in shapes and value.size == math.prod(shapes[key]):
                    value = value.reshape(shapes[key])  # a scaling vector, laid out as the kernel's dims
                out[key] = value
        return {k: np.asarray(v, dtype=np.float32) for k, v in out.items()}



def _split_fused(sites, tensor, value):
    """(site, tensor part) pairs of a module's tensor: the tensor itself for
    a module that is one site; for a fused module (GPT-2's `c_attn`, whose
    output rows are q, k and v one after another) each site's rows of what
    is per output (LoRA's B, DoRA's magnitudes, (IA)^3's output scales) and
    the whole of what is per input (LoRA's A, a feed-forward input scale)."""
    if isinstance(sites, str):
        return [(sites, value)]
    per_output = tensor in ("lora_B.weight", "lora_magnitude_vector") or (tensor == "ia3_l" and value.shape[0] != 1)
    parts = np.split(value, len(sites), axis=0) if per_output else [value] * len(sites)
    return list(zip(sites, parts))


def _our_key(shapes, family, layer, site, weight):
    """The key of the model's unit weight at `site` of layer `layer` (families
    scope their attention sites differently), or BERT's key when it has none."""
    label = family.weight_labels.get(site, site)
    pattern = re.compile(rf"{family.layer_name(layer)}/(?:[^/]+/)?{label}/{weight}")
    found = [k for k in shapes if pattern.fullmatch(k)]
    return found[0] if len(found) == 1 else bert.unit_key(layer, site, weight)


def _lora_tensor_names(dora):
    """The tensors peft saves per LoRA module."""
    return {"lora_A.weight", "lora_B.weight"} | ({"lora_magnitude_vector"} if dora else set())


def _peft_pattern_value(patterns, module, default):
    """What peft's `rank_pattern`/`alpha_pattern` gives `module` (peft's `get_pattern_key`:
    the key matches the dotted name or its end after a `.`)."""
    value = pattern_value(patterns, module, separator=".")
    return default if value is None else value


def _unit_patterns(family, values, default):
    """{our unit name: value} for the units whose value is not `default` (None if none)."""
    return {f"{family.layer_name(layer)}/{site}": v for (layer, site), v in sorted(values.items()) if v != default} or None


#: peft types whose BERT classifiers compute what nothing here computes, and why.
_NOT_READ = {
    "PREFIX_TUNING": (
        "peft's prefix tuning hands BERT past key values, which transformers 5's BERT no longer takes (peft "
        "refuses it there too); with transformers 4 BERT also moved the real tokens' positions on by the prefix "
        "length, which keras-adapters' PrefixConfig does not. Train a PrefixConfig here, or use PROMPT_TUNING or LoRA."
    ),
}

#: Our method name -> what peft calls it, for the methods peft has.
PEFT_TYPES = {"lora": "LORA", "ia3": "IA3", "prompt": "PROMPT_TUNING"}
_OUR_KEY = re.compile(r"transformer_layer_(\d+)/(?:self_attention_layer/)?(\w+)/(lora_a|lora_b|magnitude|scale)")
_MODULES = {site: module for module, site in bert.HUGGINGFACE_SITES.items()}


def _modules_regex(sites, layers=r"\d+"):
    # A regex, not module names: peft matches the name "output.dense" against attention.output.dense too.
    return rf".*encoder\.layer\.({layers})\.({'|'.join(re.escape(_MODULES[s]) for s in sites)})"


def _input_scaled(method):
    """The sites whose inputs an (IA)^3 adapter scales (peft's feedforward modules)."""
    return [s for s in method["target_modules"] if s in method.get("feedforward_modules", ["feedforward_output_dense"])]


def _own_pooler(task):
    """Whether a head computes BERT's pooler with its own weights (a tanh layer on
    the [CLS] token), which peft holds as a saved copy of the pooler."""
    return task.get("pooling") == "cls_token" and task.get("hidden_activation") == "tanh"


def peft_config(config, num_layers, base, task_type):
    """The `adapter_config.json` peft reads for our adapter `config` (folder JSON);
    `task_type`: peft's for the adapter's task (`Task.peft_task_type`)."""
    method, task = config.get("method") or {}, config["task"]
    kind = PEFT_TYPES.get(method.get("method"))
    problem = (
        "a fusion has no peft form" if "fusion" in config
        else f"method {method['method']!r} has no peft type (of ours, peft has {sorted(PEFT_TYPES)}); export it "
        "with `keras-adapters export` instead" if kind is None
        else f"its task is {task.get('type')!r}; only single-text classifiers convert to peft yet" if task_type is None
        else f"its head pools by {task.get('pooling')!r}; peft's BertForSequenceClassification reads BERT's "
        "pooled [CLS] output (train with pooling='cls' to export to peft)" if not _own_pooler(task) and task.get("pooling") != "cls"
        else "its prompt sits after [CLS] in the embedding output; peft's PROMPT_TUNING puts word vectors before "
        "[CLS] (train with PromptConfig(placement='before_cls') to export to peft)"
        if kind == "PROMPT_TUNING" and method.get("placement") != "before_cls"
        else "a prompt adapter's head reads [CLS] through its own pooler, while BERT's pooler under peft's prompt "
        "tuning reads the first virtual token" if kind == "PROMPT_TUNING" and _own_pooler(task)
        else None
    )
    if problem:
        raise AdapterFormatError(f"Cannot write a peft folder: {problem}.")
    common = {
        "peft_type": kind, "task_type": task_type, "base_model_name_or_path": base, "inference_mode": True,
        "modules_to_save": ["classifier", "pooler"] if _own_pooler(task) else ["classifier"],
    }
    if kind == "PROMPT_TUNING":
        return {
            **common, "num_virtual_tokens": method["num_virtual_tokens"], "num_transformer_submodules": 1,
            "num_layers": num_layers, "prompt_tuning_init": "RANDOM",
        }
    layers = [i for i in range(num_layers) if re.fullmatch(method.get("target_layers", ".*"), bert.encoder_name(i))]
    common.update(target_modules=_modules_regex(method["target_modules"], "|".join(map(str, layers))), fan_in_fan_out=False)
    if kind == "IA3":
        inputs = _input_scaled(method)
        return {**common, "feedforward_modules": _modules_regex(inputs) if inputs else []}
    return {
        **common, "r": method["rank"], "lora_alpha": method["alpha"], "lora_dropout": method.get("dropout", 0.0),
        "use_rslora": method.get("use_rslora", False), "use_dora": method.get("use_dora", False), "bias": "none",
        **_peft_patterns(method, layers),
    }


def _peft_patterns(method, layers):
    """peft's `rank_pattern`/`alpha_pattern`: one exact module name per unit whose
    rank or alpha is not the adapter's."""
    lora = LoRAConfig.from_config(method)
    patterns = {"rank_pattern": {}, "alpha_pattern": {}}
    for layer in layers:
        for site in lora.target_modules:
            unit = lora.for_unit(f"{bert.encoder_name(layer)}/{site}")
            module = re.escape(f"bert.encoder.layer.{layer}.{_MODULES[site]}")
            if unit.rank != lora.rank:
                patterns["rank_pattern"][module] = unit.rank
            if unit.alpha != lora.alpha:
                patterns["alpha_pattern"][module] = unit.alpha
    return patterns


def peft_tensors(method, tensors):
    """peft's tensors for our adapter's `tensors` ({our key: array})."""
    names = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight", "magnitude": "lora_magnitude_vector"}
    inputs = set(_input_scaled(method)) if method.get("method") == "ia3" else set()
    # peft keys a prompt-learning model's classifier without the inner ".model".
    head = "base_model.classifier" if method.get("method") == "prompt" else "base_model.model.classifier"
    out, unknown = {}, []
    for key, value in tensors.items():
        match = _OUR_KEY.fullmatch(key)
        if key in ("logits/kernel", "logits/bias"):
            out[f"{head}.{'weight' if key.endswith('kernel') else 'bias'}"] = value.T
        elif key in ("hidden/kernel", "hidden/bias"):  # a head's own pooler (see _own_pooler)
            out[f"{head.rsplit('.', 1)[0]}.bert.pooler.dense.{'weight' if key.endswith('kernel') else 'bias'}"] = value.T
        elif key == OUR_PROMPT_KEY:
            out[PROMPT_KEY] = value
        elif not match or match.group(2) not in _MODULES:
            unknown.append(key)
        elif match.group(3) == "scale":  # peft: (1, in) scales a feed-forward module's inputs, (out, 1) outputs
            shape = (1, -1) if match.group(2) in inputs else (-1, 1)
            out[f"base_model.model.bert.encoder.layer.{match.group(1)}.{_MODULES[match.group(2)]}.ia3_l"] = value.reshape(shape)
        else:
            name = f"base_model.model.bert.encoder.layer.{match.group(1)}.{_MODULES[match.group(2)]}.{names[match.group(3)]}"
            out[name] = value.T if value.ndim == 2 else value
    if unknown:
        raise AdapterFormatError(f"Cannot write a peft folder: no peft name for {sorted(unknown)[:6]}.")
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_peft_folder(directory, config, tensors, num_layers, base, task_type):
    """Write our adapter (folder `config` and `tensors`) as a peft folder that
    `PeftModel.from_pretrained(AutoModelForSequenceClassification..., directory)` loads."""
    from safetensors.numpy import save

    peft = peft_config(config, num_layers, base, task_type)
    data = save(peft_tensors(config["method"], tensors))

    def fill(folder):
        (Path(folder) / WEIGHT_FILES[0]).write_bytes(data)
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(peft, indent=2) + "\n")

    return replace_folder(directory, fill)
