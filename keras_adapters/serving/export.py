"""Export for serving: SavedModel (TF Serving) and TFLite.

SavedModel signatures (tokenization inside, so clients send text):
- `serving_default`: `text` (string [None]) -> `probabilities` (float32
  [None, C]), `label_id` (int64 [None]), `label` (string [None]). For a
  pair-classification adapter it takes `text_a` and `text_b` instead
  (string [None] each, row i of one paired with row i of the other). For a
  token-classification adapter it answers each text's entities, padded to
  the most in the batch: `entity_type`, `entity_text` (string [None, E]),
  `start`, `end` (int64 character offsets), `score` (float32) and
  `num_entities` (int32 [None]) (`token_data.GraphEntities`). For a
  question-answering adapter it takes `question` and `context` (string
  [None] each) and answers `answer` (string), `start`, `end` (int64
  character offsets into the context) and `score` (float32)
  (`qa_data.GraphAnswers`); long contexts are windowed as in training.
  For a multi-label adapter: `scores`, `predicted`, `labels`, `num_labels`.
- `serve_token_ids`: `token_ids`, `segment_ids`, `padding_mask` (int32
  [None, None]) -> `probabilities`, for clients that tokenize themselves.

Texts are cleaned in the graph as in training (cut to the bytes the sequence
length can use, invalid UTF-8 replaced) and truncated by the tokenizer, so
empty, huge or malformed inputs get an answer, never an error. Each batch
runs at its longest row's length, not the sequence length (padding every
row has is cut; a classifier's `serve_token_ids` cuts it too). The model's
active adapters are exported; a lone LoRA or (IA)^3 adapter is merged into
the base weights first (no extra latency), bottleneck adapters export as
they are. A model with several named adapters exports them into one
SavedModel sharing one stored backbone (`export_multi_adapter_saved_model`):
a routed signature per task (`classify`, `classify_pairs`, `tag`, `answer`,
`label`) whose `adapter` input sends each row of a mixed batch to its own
adapter in one backbone pass (`ka.Route`), and a `<verb>_<name>` signature
per adapter. Versions are written to a temporary folder and renamed when
complete.

The exported graphs need only TensorFlow and tensorflow-text at serving
time: no Keras, keras-hub or keras-adapters code.
"""

import itertools
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from keras_adapters.core import composition
from keras_adapters.runs import folder as runs
from keras_adapters.serving import graph as serving_graph
from keras_adapters.serving import server_config
from keras_adapters.serving import warmup
from keras_adapters import tasks
from keras_adapters.tasks.base import token_inputs
from keras_adapters.tasks.routing import Router
from keras_adapters.tasks.routing import adapter_length
from keras_adapters.methods.base import stored_stacks
from keras_adapters.models.adapter_model import TOKEN_INPUTS


def _task(model, length=None):
    """The serving functions of the model's active adapter, as its task defines them."""
    return tasks.get_task(model.output_head.task).serving(model, length)


def trace(function, signature):
    # autograph off: plain tensor code, no Python control flow to convert.
    return tf.function(function, input_signature=signature, autograph=False).get_concrete_function()




def graph_module(signatures, variables, **resources):
    """A plain tf.Module tracking, each once, the variables the `signatures`
    read: those of `variables` (a model's) and the functions' own; plus
    `resources` (e.g. lookup tables).

    Not keras.export.ExportArchive: it stores every variable twice (as the
    Keras variable and as the tf.Variable inside it), doubling the
    SavedModel (185 MB instead of 91 MB for MiniLM). Not the model itself:
    its optimizer state has no place in a serving artifact, and a serving
    copy's fused self-attention reads new query/key/value variables instead
    of the layers' own (`serving.graph`). The tokenizer's tables are
    constants the functions capture.

    A function's `.variables` misses some it reads (Keras' layer norms pass
    their weights as tensors), so a variable counts as read when its handle
    is among the functions' captures.
    """
    captured = {id(tensor) for f in signatures.values() for tensor, _ in f.graph.captures}
    candidates = _tf_variables(variables) + [v for f in signatures.values() for v in f.variables]
    module = tf.Module()
    module.graph_variables = list({v.ref(): v for v in candidates if id(v.handle) in captured}.values())
    for name, value in resources.items():
        setattr(module, name, value)
    return module


def _tf_variables(variables):
    """The `tf.Variable`s inside Keras variables.

    Tracking the Keras wrappers saves the same values, but a SavedModel
    loaded into a session (TF Serving's C++ loader, `tf.compat.v1`'s) then
    finds its variables uninitialised: their graph nodes are not the ones
    the restore function fills.
    """
    return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def next_version(path):
    """The version after the highest one in `path` (1 for a new base path):
    a new export never touches the versions being served."""
    base = Path(path)
    numbers = [int(p.name) for p in base.iterdir() if p.name.isdigit()] if base.is_dir() else []
    return max(numbers, default=0) + 1


def version_dir(path, version):
    if version is None:
        version = next_version(path)
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
        raise ValueError(
            f"version must be a whole number >= 0 (TF Serving loads only such folders), got {version!r}."
        )
    out = Path(path) / str(int(version))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} already exists; TF Serving versions are immutable. Pass another "
            "--version or remove it."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return str(out)


def save(module, out, signatures, warmup_logs=()):
    """Save into a hidden temporary folder beside `out` (with TF Serving's
    warm-up file when there are `warmup_logs`), then rename it.

    TF Serving only loads numbered folders, so a killed export leaves no
    half-written version behind (only a `.tmp-*` folder, which a rerun
    ignores), and the version appears complete or not at all.
    """
    _remove_dead_exports(os.path.dirname(out))
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f".tmp-{os.path.basename(out)}-{os.getpid()}-")
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if warmup_logs:
            warmup.write_warmup_file(tmp, warmup_logs)
        _readable(tmp)
        if os.path.isdir(out):  # an empty folder left by an earlier release
            os.rmdir(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _readable(folder):
    """Give a written folder the modes a plain `mkdir`/`open` would have
    (mkdtemp/mkstemp make 0700/0600): TF Serving often runs as another user."""
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)


def _remove_dead_exports(base):
    """Remove `.tmp-<version>-<pid>-*` folders of exports whose process is gone
    (killed half-way); a live export's folder is left alone."""
    for stale in Path(base).glob(".tmp-*"):
        parts = stale.name.split("-")  # ".tmp", version, pid, random (older releases: no pid)
        pid = int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None
        if stale.is_dir() and (pid is None or not _alive(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def export_saved_model(model, path, version=None, merge=True, precision="float32", examples=None):
    """Write `path/<version>/` for TF Serving (see module docstring).

    Args:
        model: an `AdapterTextClassifier` with its preprocessor; its active
            adapters are exported.
        path: the model base path (TF Serving's `model_base_path`).
        version: the numbered sub-folder to write; `None`: the next one
            (`next_version`). An existing version is never overwritten.
        merge: fold a lone LoRA/(IA)^3 adapter into the base weights first
            (the given model is not changed; a copy is merged).
        precision: `"float32"`, `"bfloat16"` or `"float16"`: what the
            served graph stores and computes in (`keras_adapters.serving.graph`);
            inputs and float32 `probabilities` are the same in each.
        examples: real inputs, {input field: [texts]} (`{"text": [...]}`;
            pairs `text_a`/`text_b`, QA `question`/`context`): TF Serving's
            warm-up requests are made of them, a request of one row and one
            of up to 8 for each signature (`keras_adapters.serving.warmup`).
            `None`: no warm-up file.

    Returns:
        The folder written.

    Example:
    ```python
    ka.export_saved_model(model, "serving/news", precision="bfloat16", examples={"text": texts[:8]})
    ```
    """
    if model.preprocessor is None:
        raise ValueError("The model has no preprocessor; text signatures need one.")
    serving_graph.check_precision(precision)
    _check_examples(examples, model.output_head.task)
    out = version_dir(path, version)
    served = serving_graph.serving_copy(model, precision, merge=merge)
    task = _task(served)
    signatures = {
        "serving_default": trace(task.serve_text, task.signature),
        "serve_token_ids": trace(task.serve_token_ids, task.token_signature),
    }
    rows = {key: _rows(examples) for key in signatures}
    return save(graph_module(signatures, served.variables), out, signatures, _warmup_logs(served, path, signatures, rows))


def export_multi_adapter_saved_model(
    model, path, names=None, version=None, aliases=None, task_signatures=True, precision="float32", examples=None
):
    """One SavedModel, one backbone, for many adapters of any tasks.

    Signatures:
    - one **routed** signature per task: its inputs and `adapter` (string
      `[None]`: each row's adapter name), each row answered by its own
      adapter, rows of one request sharing one backbone pass (`ka.Route`):
      `classify` (`text`), `classify_pairs` (`text_a`, `text_b`), `tag`
      (`text` -> entities), `answer` (`question`, `context`), `label`
      (`text` -> multi-label scores and labels). Outputs are as the task's
      single-adapter `serving_default`; class columns are as wide as the
      widest adapter's (a row's columns past its own are 0, or never
      predicted). An unknown name is an error naming it and the served ones;
    - `<routed>_token_ids` beside each: `token_ids`, `segment_ids`,
      `padding_mask` and `adapter` -> `probabilities`;
    - `<verb>_<name>` per adapter or fusion, as `serving_default` of a
      single-adapter export (`serving_default` is the first one): the verb
      is its task's (`classify`, `tag`, `answer`, `label`); each is also
      `classify_<name>`, its 0.8 name. A routed adapter's is the routed
      graph with every row sent to it (stored once).
    Fusions, and tasks that do not route, get their own signature only.

    Each adapter reads its inputs as in training (its sequence length, QA
    window settings). The frozen backbone and each adapter are stored once
    and shared by every signature. The given model is not changed (a copy is
    traced).

    Args:
        model: an `AdapterModel` holding several named adapters.
        names: the adapters (or fusions) to serve; default: every adapter.
        path, version: as `export_saved_model`.
        aliases: dict of other names the routed signatures accept -> adapter
            name (the CLI passes the run folders' names).
        task_signatures: also write `<verb>_<name>` for each adapter.
            Without them a server holds less (each costs memory when
            loaded, see BENCHMARKS.md) and `serving_default` is the first
            routed signature; fusions always get theirs.
        precision: as `export_saved_model`.
        examples: {adapter name: {input field: [texts]}}: real inputs for
            TF Serving's warm-up requests (as `export_saved_model`); a routed
            signature's requests mix its adapters' rows.
    """
    names = _served_names(model, names)
    groups = _routed_groups(model, names)
    keys = _signature_keys(model, names, groups, task_signatures)
    serving_graph.check_precision(precision)
    for name, inputs in (examples or {}).items():
        if name not in names:
            raise ValueError(f"examples for {name!r}, which this export does not serve ({', '.join(names)}).")
        _check_examples(inputs, model.heads[name].task, name)
    out = version_dir(path, version)
    model = serving_graph.serving_copy(model, precision, merge=False)
    routed = [n for group in groups.values() for n in group]
    tables, stacks = [], []
    signatures, per_adapter = {}, {}
    served_by = {n: task.routed_name for task, group in groups.items() for n in group}
    for task, group in groups.items():
        router = Router(model, group, aliases, elsewhere={n: s for n, s in served_by.items() if n not in group})
        serving, text, tokens, stacked = _trace_routed(model, task, router)
        signatures[task.routed_name], signatures[f"{task.routed_name}_token_ids"] = text, tokens
        tables.append(router.table)
        stacks += stacked
        if task_signatures:
            for index, name in enumerate(group):
                # A thin wrapper: the graph is stored once, not once per adapter.
                per_adapter[name] = trace(_one_adapter(text, serving, name, index), serving.text_signature)
    for name in names:
        if name not in routed:
            model.set_active_adapters(model.fusion(name) if name in model.fusion_names else name)
            serving = _task(model, adapter_length(model, name))
            per_adapter[name] = trace(serving.serve_text, serving.signature)
    for name, function in per_adapter.items():
        signatures.update({key: function for key in keys[name]})
    first = keys[names[0]][0] if names[0] in keys else next(iter(signatures))
    signatures["serving_default"] = signatures[first]
    rows = _routed_rows(examples or {}, names, groups, keys)
    rows["serving_default"] = rows.get(first)
    return save(graph_module(signatures, model.variables, adapter_tables=tables, adapter_stacks=stacks), out, signatures,
                 _warmup_logs(model, path, signatures, rows))


def _served_names(model, names):
    names = list(names or model.adapter_names)
    if not names:
        raise ValueError("No adapters to export.")
    if model.preprocessor is None:
        raise ValueError("The model has no preprocessor; text signatures need one.")
    full = [n for n in names if n in model.adapter_names and not model.adapter_config(n).freezes_backbone]
    if full:
        raise ValueError(
            f"{full} fine-tune the whole backbone and cannot share one; export them on their own."
        )
    return names


def _routed_groups(model, names):
    """{task: its adapters among `names`}, for tasks whose adapters share a routed batch."""
    groups = {}
    for name in names:
        task = tasks.get_task(model.heads[name].task)
        if name in model.adapter_names and task.routable:
            groups.setdefault(task, []).append(name)
    signature = {}
    for task in groups:
        other = signature.setdefault(task.routed_name, task)
        if other is not task:
            raise ValueError(
                f"Tasks {other.cli_name} and {task.cli_name} both name their routed signature "
                f"{task.routed_name!r}; give one of them another `routed_signature`."
            )
    return groups


def _trace_routed(model, task, router):
    """(the task's routed serving, its traced text and token functions, the
    stacked weights they read: kept alive by the caller, the functions hold
    them weakly)."""
    serving = task.serving(model, None, router)
    active = model.active_adapters
    model.set_active_adapters(composition.Route(*router.names))
    try:
        with stored_stacks({}) as stacks:
            text = trace(serving.serve_text, serving.signature)
            tokens = trace(serving.serve_token_ids, serving.token_signature)
    finally:
        model.set_active_adapters(active)
    return serving, text, tokens, list(stacks.values())


def _one_adapter(routed, serving, name, index):
    """`routed` with every row sent to adapter `name`, its outputs as its own signature's."""
    fields = [spec.name for spec in serving.text_signature]

    def serve(*inputs):
        rows = tf.size(tf.reshape(inputs[0], [-1]))
        outputs = routed(**dict(zip(fields, inputs)), adapter=tf.fill([rows], name))
        return serving.narrow(outputs, index)

    return serve


def _signature_keys(model, names, groups, task_signatures=True):
    """{name: its signature keys}: `<verb>_<name>` for its task's verb
    (`classify`, `tag`, `answer`, `label`), and `classify_<name>` too, the
    name every task's signature had before 0.9. Routed adapters have none
    without `task_signatures`."""
    routed = {n for group in groups.values() for n in group}
    keys = {}
    for name in names:
        if name in routed and not task_signatures:
            continue
        verb = tasks.get_task(model.heads[name].task).signature_verb
        keys[name] = list(dict.fromkeys([f"{verb}_{_signature_name(name)}", f"classify_{_signature_name(name)}"]))
    every = [k for ks in keys.values() for k in ks]
    taken = {n for task in groups for n in (task.routed_name, f"{task.routed_name}_token_ids")}
    clashes = sorted({k for k in every if k in taken or every.count(k) > 1})
    if clashes:
        routed_names = sorted(k for k in clashes if k in taken)
        also = f" ({', '.join(routed_names)}: a routed signature's name)" if routed_names else ""
        raise ValueError(
            f"The adapter names {names} give clashing signature names {clashes}{also}; rename the "
            "adapters (or run folders) so that each gives its own <verb>_<name>."
        )
    return keys


def _check_examples(examples, task, name="the model"):
    fields = tasks.get_task(task).input_fields
    if examples is not None and (set(examples) != set(fields) or len({len(v) for v in examples.values()}) > 1):
        raise ValueError(
            f"examples for {name} must hold one list of texts per input of its task ({', '.join(fields)}), all "
            f"as long; got {({k: len(v) for k, v in examples.items()})}."
        )


def _rows(examples):
    """[{field: text}] of {field: [texts]} (none for `None`)."""
    if not examples:
        return []
    return [dict(zip(examples, values)) for values in zip(*examples.values())]


def _routed_rows(examples, names, groups, keys):
    """{signature key: rows}: each adapter's signatures its own rows; a routed
    signature the rows of its adapters in turn, each naming its adapter."""
    rows = {key: _rows(examples.get(name)) for name in names for key in keys.get(name, ())}
    for task, group in groups.items():
        own = [[{**row, "adapter": name} for row in _rows(examples.get(name))] for name in group]
        mixed = [row for turn in itertools.zip_longest(*own) for row in turn if row]
        rows[task.routed_name] = rows[f"{task.routed_name}_token_ids"] = mixed
    return rows


def _warmup_logs(model, path, signatures, rows):
    def tokenize(texts):
        x = model.preprocessor(tf.constant(texts))
        return {k: x[k].numpy() for k in TOKEN_INPUTS}

    return warmup.warmup_requests(signatures, rows, tokenize, _model_name(path))


def _model_name(path):
    """TF Serving's name for the model stored under base path `path`: its folder's name."""
    return os.path.basename(os.path.normpath(str(path)))


def _signature_name(name):
    return "".join(c if c.isalnum() else "_" for c in name)


def export_run_saved_model(
    run_dirs, path, version=None, merge=True, task_signatures=True, precision="float32", warmup_requests=True,
    serving_config=None, labels=(),
):
    """Export one run folder, or several (comma list) as a multi-adapter model
    whose routed signatures take each run folder's name (see `runs.task_name`).
    With `warmup_requests`, TF Serving's warm-up file is made of the runs'
    kept training inputs (`examples.json`). With `serving_config` (a folder),
    the version is added to the `models.config` there, model name `path`'s
    folder name, with `labels` (`server_config.add_version`), and a
    `batching.config` is written there unless one exists."""
    if labels and not serving_config:
        raise ValueError("Version labels live in TF Serving's model config: pass --serving-config DIR with --label.")
    name = _model_name(path)
    if serving_config:
        server_config.check_version(serving_config, name, path, labels)
    run_list = [r for r in str(run_dirs).split(",") if r]
    examples = _run_examples(run_list) if warmup_requests else {}
    if len(run_list) == 1:
        out = export_saved_model(
            runs.load_run(run_list[0]), path, version=version, merge=merge, precision=precision,
            examples=examples.get(run_list[0]),
        )
    else:
        model, names = runs.load_runs(run_list)
        aliases = {os.path.basename(os.path.normpath(r)): n for r, n in zip(run_list, names)}
        out = export_multi_adapter_saved_model(
            model, path, names=names, version=version, aliases=aliases, task_signatures=task_signatures,
            precision=precision, examples={n: examples[r] for r, n in zip(run_list, names) if r in examples},
        )
    if serving_config:
        server_config.add_version(serving_config, name, path, int(os.path.basename(out)), labels)
        server_config.write_batching_config(serving_config)
    return out


def _run_examples(run_list):
    """{run: its kept inputs}; a run without any is named in a warning."""
    found = {r: runs.example_inputs(r) for r in run_list}
    for run, (_, why) in found.items():
        if why:
            warnings.warn(f"No warm-up requests for {run}: {why}. TF Serving will load it without them.",
                          stacklevel=3)
    return {r: e for r, (e, _) in found.items() if e}


def describe_run_signatures(run_dirs, task_signatures=True):
    """What `export_run_saved_model` writes for several runs, for people:
    each task's routed signature with the names its `adapter` takes, then
    the per-run signatures."""
    by_task = {}
    for run in (r for r in str(run_dirs).split(",") if r):
        by_task.setdefault(tasks.get_task(runs.run_task(run)), []).append(runs.task_name(run))
    parts = []
    for task, names in by_task.items():
        if task.routable:
            fields = ", ".join(task.input_fields)
            parts.append(f"{task.routed_name} ({fields}, adapter: one of {', '.join(names)}), "
                         f"{task.routed_name}_token_ids")
    for task, names in by_task.items():
        if task_signatures or not task.routable:
            parts += [f"{task.signature_verb}_{_signature_name(n)}" for n in names]
    return ", ".join(parts)


def export_run_tflite(run_dirs, path, sequence_length=None, quantize="none", merge=True):
    """Export one run folder, or several (comma list) routed per row."""
    run_list = [r for r in str(run_dirs).split(",") if r]
    if len(run_list) == 1:
        model, names = runs.load_run(run_list[0]), None
    else:
        model, names = runs.load_runs(run_list)
    return export_tflite(
        model, path, sequence_length=sequence_length, quantize=quantize, merge=merge, names=names
    )


# ------------------------------------------------------------------ TFLite
def export_tflite(model, path, sequence_length=None, quantize="none", merge=True, names=None):
    """Write `model.tflite` and `vocab.txt` into `path`, with `labels.txt`
    (one task) or `adapters.json` (several, routed per row).

    The token-id path at a fixed sequence length, TFLite built-in ops only
    (no Flex ops). The model has a `serving_default` signature with inputs
    `token_ids`, `segment_ids`, `padding_mask` (int32 [batch, L])
    and output `probabilities`.

    Args:
        quantize: `"none"` (float32) or `"dynamic"` (dynamic-range int8
            weights).
        merge: fold a lone LoRA/(IA)^3 adapter into the base weights first.
        names: adapters to serve together, each row routed to its own
            (`ka.Route`): an extra input `adapter_id` (int32 [batch], the
            index into `names`) and `probabilities` as wide as the largest
            head (a row's columns past its task's classes are 0).
            `adapters.json` lists each id's name, labels and sequence
            length. Default: one task, the model's active adapters.
    """
    if quantize not in ("none", "dynamic"):
        raise ValueError(f"quantize must be 'none' or 'dynamic', got {quantize!r}.")
    length = int(sequence_length or model.sequence_length or 128)
    _check_length(model, length)
    signature = [tf.TensorSpec([None, length], tf.int32, name=n) for n in TOKEN_INPUTS]
    if names:
        names = list(names)
        signature.append(tf.TensorSpec([None], tf.int32, name="adapter_id"))
        served = serving_graph.serving_copy(model, "float32", merge=False, fuse=False)
        module = _routed_tflite_module(served, names, signature)
    else:
        # Not fused: TFLite's converter makes its own fused ops.
        served = serving_graph.serving_copy(model, "float32", merge=merge, fuse=False)
        module = _frozen_module(trace(tasks.TaskServing(served, length).serve_token_ids, signature), signature)
    files = {"model.tflite": _convert(module, quantize), "vocab.txt": _vocabulary(served)}
    if names:
        entries = [
            {
                "adapter_id": i,
                "name": n,
                "task": model.heads[n].task,
                **tasks.get_task(model.heads[n].task).tflite_entry(model.heads[n]),
                "sequence_length": min(adapter_length(model, n), length),
            }
            for i, n in enumerate(names)
        ]
        files["adapters.json"] = json.dumps({"adapters": entries}, indent=2) + "\n"
    else:
        files.update(tasks.get_task(served.output_head.task).tflite_files(served.output_head))
    replace_files(path, files, stale=("adapters.json", "labels.txt", "thresholds.txt"))
    return os.path.join(path, "model.tflite")


def _check_length(model, length):
    limit = getattr(model.backbone, "max_sequence_length", None)
    if length < 3 or (limit and length > limit):
        raise ValueError(
            f"sequence_length {length} does not fit this backbone: use 3 to {limit} "
            f"(its {limit} positions hold [CLS], the text and [SEP])."
        )


def replace_files(folder, files, stale=()):
    """Write every file to a temporary name first, then rename them all.

    A killed or disk-full export leaves the previous model, vocabulary and
    labels whole (a half-written `model.tflite` crashes the interpreter);
    the renames come last, together. Files of `stale` not written this time
    (the other kind of export's) are removed, so no old `labels.txt` stays
    beside a routed model.
    """
    os.makedirs(folder, exist_ok=True)
    for name in files:  # left by a killed export
        for leftover in Path(folder).glob(f".tmp-{name}-*"):
            leftover.unlink(missing_ok=True)
    written = {}
    try:
        for name, content in files.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{name}-")
            written[name] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(content.encode("utf-8") if isinstance(content, str) else content)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())
        for name, tmp in written.items():
            os.replace(tmp, os.path.join(folder, name))
    finally:
        for tmp in written.values():
            if os.path.exists(tmp):
                os.remove(tmp)
    for name in stale:
        if name not in files:
            Path(folder, name).unlink(missing_ok=True)


def _routed_tflite_module(model, names, signature):
    unknown = [n for n in names if n not in model.adapter_names]
    if unknown:
        raise ValueError(f"{unknown} are not adapters of this model (it has {model.adapter_names}).")
    kinds = {n: model.heads[n].task for n in names}
    if len(set(kinds.values())) > 1:
        raise ValueError(
            f"A routed TFLite model serves adapters of one task (its output means one thing); these are "
            f"{kinds}. Export each task's adapters (runs) to a TFLite model of its own."
        )
    route = composition.Route(*names)

    def classify(token_ids, segment_ids, padding_mask, adapter_id):
        inputs = {**token_inputs(token_ids, segment_ids, padding_mask), "adapter_id": adapter_id}
        return {"probabilities": tf.cast(model(inputs, training=False), tf.float32)}

    active = model.active_adapters
    model.set_active_adapters(route)
    try:
        # Frozen while the stacked weights it reads exist.
        with stored_stacks({}):
            return _frozen_module(trace(classify, signature), signature)
    finally:
        model.set_active_adapters(active)


def _frozen_module(function, signature):
    """A SavedModel folder's module serving `function` with its weights as
    constants: left as resource variables, the TFLite interpreter starts them
    uninitialised (NaN outputs)."""
    frozen = convert_variables_to_constants_v2(function)
    keys = [spec.name for spec in signature]

    def serve(*args):
        outputs = frozen(**dict(zip(keys, args)))
        probabilities = outputs["probabilities"] if isinstance(outputs, dict) else outputs[0]
        return {"probabilities": tf.identity(probabilities, name="probabilities")}

    module = tf.Module()
    # Re-wrapped, so the TFLite signature keeps the input names.
    module.serve = tf.function(serve, input_signature=signature, autograph=False)
    return module


def _convert(module, quantize):
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        return _flatbuffer(converter, quantize)


def _flatbuffer(converter, quantize):
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _vocabulary(model):
    return "\n".join(model.preprocessor.tokenizer.get_vocabulary()) + "\n"


def tflite_signature_runner(model_path):
    """A TFLite interpreter's `serving_default` runner (LiteRT if installed)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(model_path))
    return interpreter.get_signature_runner("serving_default")


def run_tflite(runner, tokens):
    """Probabilities for a dict of token arrays (and `adapter_id` for a
    routed model), one example at a time."""
    keys = [*TOKEN_INPUTS, "adapter_id"] if "adapter_id" in tokens else TOKEN_INPUTS
    rows = []
    for i in range(len(tokens["token_ids"])):
        out = runner(**{k: np.asarray(tokens[k][i : i + 1], np.int32) for k in keys})
        rows.append(out["probabilities"][0])
    return np.stack(rows)
