"""The `Task` interface, the registry of tasks, and telling a data source's task.

A task is everything one kind of head means: the head layer, its loss and
metrics, the readers that turn files into `tf.data`, label checks, the
evaluation report, predictions for people and the serving functions. A
decoder's task (`decoder = True`: causal language modelling) has no head
layer: the decoder's own token output is its head, and its adapters live in
`AdapterCausalLM`. Each
task is one module in this package that subclasses `Task` and registers an
instance next to its code (`register_task`), as peft registers its methods;
nothing outside `keras_adapters.tasks` tests which task it holds.

Python and adapter folders spell a task with underscores
(`"pair_classification"`); the CLI's `--task` takes the same words with
hyphens (`pair-classification`), as the Hugging Face pipelines name them.
"""

import csv
import json
import re
import sys
from pathlib import Path

import keras
import tensorflow as tf

from keras_adapters.methods.base import pad_axis
from keras_adapters.tasks.routing import ADAPTER_SPEC

TEXT_CLASSIFICATION = "text_classification"
PAIR_CLASSIFICATION = "pair_classification"
TOKEN_CLASSIFICATION = "token_classification"
QUESTION_ANSWERING = "question_answering"
CAUSAL_LM = "causal_lm"
#: Tasks a `ClassificationHead` does (one label per text, or per pair).
CLASSIFICATION_TASKS = (TEXT_CLASSIFICATION, PAIR_CLASSIFICATION)
#: File suffixes of tabular data (JSON lines, comma- and tab-separated values).
PAIR_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")
#: A CoNLL line: a word, white space, and a BIO/IOBES tag last.
CONLL_LINE = re.compile(r"^\S.*\s(O|[BIES]-\S+)$")
#: Examples a run keeps of its training data (`Task.sample_inputs`).
SAMPLE_SIZE = 8
#: The keys of a task record (`head.task_config()`) that every head has.
COMMON_HEAD_KEYS = ("task", "num_classes", "class_names", "pooling", "dropout", "sequence_length")

_REGISTRY = {}


class Task:
    """One kind of head, from data files to served answers.

    Subclass it, set the class attributes and override the hooks a task
    needs, then `register_task(MyTask())`. The model, training runs,
    evaluation, the CLI and export call only these hooks.

    Attributes:
        name: the task's name in Python spelling (`"text_classification"`).
        head_class: the Keras layer of its head; `head_class(**record)`
            rebuilds a head from its `task_config()` record.
        head_settings: head options beyond the common ones
            (`COMMON_HEAD_KEYS`), kept in adapter folders and copied to a
            new adapter of the same task.
        input_fields: the texts of one example, in order (`("text",)`).
        monitor: the metric the best epoch is picked by (higher is better).
        unit: what one example of its data files is (`validation_split`
            counts these).
        bf16_safe: `False` when Keras' whole-model `mixed_bfloat16` may cost
            accuracy (`"auto"` precision then picks `autocast_bfloat16` on
            CPUs: bf16 matrix products, float32 residual stream).
        routable: its adapters can share a routed batch (`ka.Route`), and a
            multi-adapter SavedModel gets one routed signature for them.
        signature_verb: a multi-adapter SavedModel's signature of adapter
            `x` is `<verb>_x`.
        routed_signature: the name of the routed signature (`<verb>` unless
            another task's verb is the same).
        served_outputs: what its text signature answers, when not a class
            (`"entities"`), for messages.
        data_formats: the data files it reads, for error messages.
        decoder: its adapters live on a decoder (`AdapterCausalLM`), whose
            own token output layer is the head: no `head_class`; runs
            train, load and export it as a causal language model.
        run_options: what its `evaluate` and `predict` take beyond batch
            size and data options, by Python name (the CLI's
            `--max-new-tokens` is `max_new_tokens`).

    Example:
    ```python
    class TextLength(ka.tasks.Task):
        name = "text_length"
        head_class = LengthHead
        ...
    ka.tasks.register_task(TextLength())
    ```
    """

    name = None
    head_class = None
    head_settings = ()
    input_fields = ("text",)
    monitor = "accuracy"
    unit = "example"
    #: Outputs and labels per token (a tagger, span answers): private
    #: training then cannot cut an example's padding off (`core.dp_sgd`).
    token_outputs = False
    #: What one training row is, the unit a DP guarantee protects.
    privacy_unit = "example"
    #: Data options a private run reads its training data with (`datasets`),
    #: e.g. one row per question, so the guarantee covers a whole question.
    private_data_options = {}
    bf16_safe = True
    routable = False
    signature_verb = "classify"
    routed_signature = None
    #: peft's `task_type` for the same head on a Hugging Face model, when
    #: an adapter of this task converts to and from peft (`io.peft_format`).
    peft_task_type = None
    #: AdapterHub's `head_type` for the same head, when its heads convert (`io.adapterhub_format`).
    adapterhub_head_type = None
    served_outputs = ""
    data_formats = ""
    decoder = False
    run_options = ()

    @property
    def cli_name(self):
        return cli_name(self.name)

    @property
    def routed_name(self):
        return self.routed_signature or self.signature_verb

    @property
    def signature_summary(self):
        """What its text signature takes (and gives, when not a class), for people."""
        taken = ", ".join(self.input_fields)
        return f"{taken} -> {self.served_outputs}" if self.served_outputs else taken

    def __repr__(self):
        return f"<task {self.name}>"

    def require_active(self, model, method):
        """Refuse `model.<method>()` unless its active adapter does this task."""
        if model.task != self.name:
            raise ValueError(
                f"{method}() needs an active {self.cli_name} adapter; the active adapter "
                f"{model.active_adapters!r} does {model.task and cli_name(model.task)}."
            )

    # ------------------------------------------------------------- the head
    def require_head(self):
        """Refuse a head for a task that has none (a decoder's: its token output is the head)."""
        if self.head_class is None:
            raise ValueError(
                f"{self.cli_name} adapters have no head layer of their own (the decoder's token output is "
                "theirs): add and load them on keras_adapters.AdapterCausalLM, not AdapterModel."
            )

    def make_head(self, record, **layer_kwargs):
        """The head a task record describes (`task_config()`, or an adapter
        folder's `task` section with `type` as `task`)."""
        self.require_head()
        keys = (*COMMON_HEAD_KEYS, *self.head_settings)
        return self.head_class(**{k: v for k, v in record.items() if k in keys}, **layer_kwargs)

    def new_head_record(self, base, given, settings):
        """The record of a new adapter's head (`add_adapter`).

        Args:
            base: the record of the model's first head (or defaults), whose
                pooling and dropout (and, for the same task, settings) a new
                head starts from.
            given: the arguments the caller passed (`None`: unset).
            settings: task-specific keyword arguments.
        """
        self.require_head()
        unknown = sorted(set(settings) - set(self.head_settings))
        if unknown:
            takers = [t.cli_name for t in _REGISTRY.values()
                      if t.head_class is not None and set(unknown) <= set(t.head_settings)]
            who = f"only {' and '.join(takers)} heads take" if takers else "no task's heads take"
            raise TypeError(f"add_adapter got {unknown}, which {who} (this adapter's task: {self.cli_name}).")
        same = base.get("task") == self.name
        record = {
            "task": self.name,
            "pooling": given["pooling"] if given["pooling"] is not None else (base.get("pooling") or "cls"),
            "dropout": given["dropout"] if given["dropout"] is not None else base.get("dropout", 0.1),
            "class_names": given["class_names"],
            "sequence_length": given["sequence_length"],
            "num_classes": given["num_classes"],
        }
        if record["num_classes"] is None and given["class_names"] is not None:
            record["num_classes"] = len(given["class_names"])
        if record["num_classes"] is None and same:
            record["num_classes"] = base.get("num_classes")
        record.update({k: base[k] for k in self.head_settings if same and k in base})
        record.update(settings)
        return record

    # ------------------------------------------------------------- training
    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy()

    def metrics(self, num_classes, class_names=None):
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]

    def check_labels(self, y, x, num_classes, class_names=None, source="y"):
        """Refuse in-memory labels the head cannot learn from (before `fit`)."""

    def check_inputs(self, x, adapter):
        """Refuse in-memory inputs that are not this task's (before `fit`,
        `evaluate`, `predict`); `adapter` names the head's adapter."""

    # ------------------------------------------------------------ data files
    def detect(self, path, options):
        """`True` when `path` (a `Path`, or `tfds:NAME` as a string) is this
        task's data; `options` holds the data options (`text_b_key`, ...)."""
        return False

    def check_data(self, data):
        """Raise `ValueError` when `data` is not a source this task reads."""

    def datasets(self, data, preprocessor, validation_split, **options):
        """(train, validation or `None`): batched `tf.data` datasets of
        `(inputs, labels)` with `class_names` and `num_examples`."""
        raise NotImplementedError(f"{self.cli_name} has no data reader.")

    def count_examples(self, data, options):
        """How many examples (`unit`s) `data` holds."""
        raise NotImplementedError

    def tune(self, model, validation):
        """After training: adjust the head on validation data (multi-label
        thresholds); `True` when the head changed and is to be saved again."""
        return False

    def head_options(self, train, options):
        """Head settings a training run takes from its data or data options."""
        return {}

    # ------------------------------------------------------------ using it
    def evaluate(self, model, data, batch_size=32, **options):
        """The report (a JSON-able dict) of `model`'s active adapter on `data`."""
        raise NotImplementedError(f"{self.cli_name} has no evaluation.")

    def format_report(self, report):
        return json.dumps(report, indent=2)

    def read_inputs(self, path, options):
        """The examples of a file to predict, one list per `input_fields`
        entry. One field: each line of the file is a text (blank lines too,
        so output line i answers input line i); `"-"` reads standard input."""
        if len(self.input_fields) != 1:
            raise NotImplementedError(f"{self.cli_name} reads no prediction file.")
        stream = sys.stdin if str(path) == "-" else open(path, encoding="utf-8-sig", errors="replace")
        with stream:
            return [[line.rstrip("\r\n").removeprefix("\ufeff") for line in stream]]

    def sample_inputs(self, data, options, count=SAMPLE_SIZE):
        """Up to `count` examples of training data `data`, as `predict` takes
        them (one list per `input_fields` entry), or `None` when they cannot
        be read here (TFDS). A run keeps them (`examples.json`); export makes
        TF Serving's warm-up requests of them."""
        return [column[:count] for column in self.read_inputs(data, options)]

    def predict(self, model, columns, batch_size=32):
        """One JSON-able answer per example; `columns` holds one list of
        strings per `input_fields` entry."""
        raise NotImplementedError(f"{self.cli_name} has no prediction.")

    def format_prediction(self, result):
        """One line for people (the CLI's `predict` without `--json`)."""
        return json.dumps(result)

    def tflite_files(self, head):
        """{file name: text} written next to a TFLite model of this task."""
        return {"labels.txt": "\n".join(head.label_names()) + "\n"}

    def tflite_entry(self, head):
        """What a routed TFLite model's `adapters.json` says of an adapter of this task."""
        return {"labels": head.label_names()}

    def serving(self, model, length, router=None):
        """The serving functions of `model`'s active adapter (a `TaskServing`),
        or with `router`, of all its adapters in one routed signature."""
        raise NotImplementedError(f"{self.cli_name} has no serving signature.")

    def route_outputs(self, heads, ids, sequence_output, pooled_output, padding_mask):
        """Each row through its own adapter's head (`ka.Route`): row i of
        `heads[ids[i]]`'s output, zero-padded on the last axis to the widest."""
        outputs = [tf.cast(h(sequence_output, pooled_output, padding_mask, training=False), tf.float32) for h in heads]
        widths = {o.shape[-1] for o in outputs}  # class counts; unknown (one) for QA's positions
        if len(widths) > 1:
            outputs = [pad_axis(o, max(widths), len(o.shape) - 1) for o in outputs]
        stacked = tf.stack(outputs)  # [heads, batch, ...]
        ids = tf.cast(ids, tf.int32)
        return tf.gather_nd(stacked, tf.stack([ids, tf.range(tf.shape(ids)[0])], axis=1))


def without_padding_columns(inputs):
    """Token inputs cut after the last column any row uses.

    A text signature packs to the served sequence length, and a short text
    would otherwise run at all of it: one 17-word sentence took 15.8 ms in a
    bf16 MiniLM export at 128 tokens, 7.3 cut (BENCHMARKS.md "Texts at their
    own length"). The cut columns are padding in every row, keys every query
    masks, so no row's output changes; per-token outputs are shorter by them.
    """
    mask = tf.cast(inputs["padding_mask"], tf.bool)
    columns = tf.range(1, tf.shape(mask)[1] + 1)
    # At least one column: an empty batch reduces to the smallest integer.
    used = tf.maximum(tf.reduce_max(tf.where(mask, columns, 0)), 1)
    return {key: value[:, :used] for key, value in inputs.items()}


def token_inputs(token_ids, segment_ids, padding_mask):
    """Served token tensors (any integer dtype) as the model's inputs."""
    return {
        "token_ids": tf.cast(token_ids, tf.int32),
        "segment_ids": tf.cast(segment_ids, tf.int32),
        "padding_mask": tf.cast(padding_mask, tf.bool),
    }


class TaskServing:
    """What a task's adapter exposes in a SavedModel; with a `Router`, what
    all of one task's adapters expose in one routed signature (each row names
    its adapter, `keras_adapters.tasks.routing`).

    Subclasses implement `serve_text(*inputs)`: the raw inputs of
    `text_signature`, then (routed) `adapter`; `self.route` splits them.

    Attributes:
        text_signature: the `tf.TensorSpec`s of the raw inputs (without `adapter`).
        heads: the served heads (one, or the router's).
        lengths: each served adapter's sequence length; `length` the longest.
    """

    text_signature = ()
    #: `serve_token_ids` cuts the padding columns every row has before the
    #: model (`without_padding_columns`): for tasks with one output per row,
    #: whose answers the cut cannot change. Per-token outputs keep the width
    #: the client sent.
    cuts_token_padding = False

    def __init__(self, model, length, router=None):
        self.model = model
        self.router = router
        if router is None:
            self.heads, self.lengths = [model.output_head], [int(length or model.sequence_length or 512)]
        else:
            self.heads, self.lengths = list(router.heads), list(router.lengths)
        self.length = max(self.lengths)

    @property
    def signature(self):
        """`serve_text`'s input signature: the raw inputs, and `adapter` when routed."""
        return [*self.text_signature, *self._adapter_spec()]

    @property
    def token_signature(self):
        """`serve_token_ids`' input signature."""
        tokens = [tf.TensorSpec([None, None], tf.int32, name=n) for n in ("token_ids", "segment_ids", "padding_mask")]
        return [*tokens, *self._adapter_spec()]

    def _adapter_spec(self):
        return [ADAPTER_SPEC] if self.router is not None else []

    def route(self, inputs, rows):
        """(the inputs without `adapter`, each row's adapter index int32 `[rows]`: all 0 unrouted)."""
        if self.router is None:
            return list(inputs), tf.zeros([rows], tf.int32)
        *inputs, adapter = inputs
        return inputs, self.router.ids(adapter, rows)

    def run(self, inputs, ids):
        """The model's float32 outputs on token inputs, each row through its adapter."""
        if self.router is not None:
            inputs = {**inputs, "adapter_id": ids}
        return tf.cast(self.model(inputs, training=False), tf.float32)

    def run_cut(self, inputs, ids, token_axis=None):
        """`run` on `inputs` without the padding columns every row has
        (`without_padding_columns`). Per-token outputs (`token_axis`: the
        outputs' axis over tokens) are padded back to the inputs' width, with
        zeros where only padding sits."""
        outputs = self.run(without_padding_columns(inputs), ids)
        if token_axis is None:
            return outputs
        cut = tf.shape(inputs["token_ids"])[1] - tf.shape(outputs)[token_axis]
        return tf.pad(outputs, [[0, cut] if axis == token_axis else [0, 0] for axis in range(outputs.shape.rank)])

    def serve_token_ids(self, token_ids, segment_ids, padding_mask, *adapter):
        inputs = token_inputs(token_ids, segment_ids, padding_mask)
        _, ids = self.route([token_ids, *adapter], tf.shape(token_ids)[0])
        run = self.run_cut if self.cuts_token_padding else self.run
        return self.token_outputs(run(inputs, ids), ids)

    def token_outputs(self, probabilities, ids):
        """`serve_token_ids`' outputs from the model's and each row's adapter index."""
        return {"probabilities": probabilities}

    def narrow(self, outputs, index):
        """A routed signature's outputs for rows of adapter `index` alone, as
        its own signature gives them (its own label columns)."""
        return outputs


# ------------------------------------------------------------------ registry
def register_task(task):
    """Make `task` (a `Task` instance) known to models, runs, the CLI and export.

    Returns `task`. A second task under a taken name is an error, unless it is
    of the same class (re-importing a module).
    """
    if not isinstance(task, Task) or not task.name or (task.head_class is None and not task.decoder):
        raise TypeError(f"register_task takes a Task instance with a name and a head_class (or decoder=True), "
                        f"got {task!r}.")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", task.name):
        raise ValueError(f"A task name is lower case letters, digits and '_', got {task.name!r}.")
    known = _REGISTRY.get(task.name)
    if known is not None and type(known).__qualname__ != type(task).__qualname__:
        raise ValueError(f"A task named {task.name!r} is registered already ({known!r}).")
    _REGISTRY[task.name] = task
    return task


def available_tasks():
    """The registered tasks' names, in registration order."""
    return list(_REGISTRY)


def peft_task_types():
    """{peft task_type: task name} of the tasks whose adapters convert to and from peft."""
    return {t.peft_task_type: name for name, t in _REGISTRY.items() if t.peft_task_type}


def adapterhub_head_types():
    """{AdapterHub head_type: task name} of the tasks whose AdapterHub heads convert."""
    return {t.adapterhub_head_type: name for name, t in _REGISTRY.items() if t.adapterhub_head_type}


def get_task(task):
    """The registered `Task` named `task` (either spelling), or `task` itself.

    Raises:
        ValueError: no such task; the message names the known ones.
    """
    if isinstance(task, Task):
        return task
    name = str(task).replace("-", "_")
    if name not in _REGISTRY:
        raise ValueError(f"Unknown task {task!r}; the tasks are {', '.join(map(cli_name, _REGISTRY))}.")
    return _REGISTRY[name]


def shared_task(kinds):
    """The one task of a Route's adapters ({name: task name}); an error when
    they are of several tasks (their outputs would mean different things) or
    of a task that does not route."""
    names = sorted(set(kinds.values()))
    if len(names) > 1:
        raise ValueError(
            f"A Route serves adapters of one task in one batch; {list(kinds)} do {names}: "
            "route each task's adapters in a Route of their own."
        )
    task = get_task(names[0])
    if not task.routable:
        raise ValueError(
            f"{task.cli_name} adapters cannot share a routed batch ({list(kinds)}): activate them one at a time."
        )
    return task


def canonical_task(task):
    """`task` in Python spelling; `ValueError` naming the tasks for anything else."""
    return get_task(task).name


def cli_name(task):
    return task.replace("_", "-")


def formats():
    return "; ".join(t.data_formats for t in _REGISTRY.values() if t.data_formats)


def detect_task(source, text_b_key="text_b", **options):
    """The task a data source is for, from its layout: the first registered
    task whose `detect` accepts it.

    Raises:
        ValueError: no task reads it; the message names the formats.
    """
    source = str(source)
    options = {"text_b_key": text_b_key, **options}
    if not source.startswith("tfds:") and not Path(source).exists():
        raise ValueError(f"{source!r} does not exist. Pass {formats()}.")
    path = source if source.startswith("tfds:") else Path(source)
    for task in _REGISTRY.values():
        if task.detect(path, options):
            return task.name
    if isinstance(path, Path) and path.suffix.lower() in PAIR_SUFFIXES:
        fields = first_record_fields(path)
        raise ValueError(
            f"{source} has no {text_b_key!r} column (its columns: {sorted(fields)}), so its task cannot be "
            f"told. For sentence pairs name the second text's column (--text-b-key), or pass --task. "
            f"Formats: {formats()}."
        )
    raise ValueError(f"Cannot tell the task of {source!r} from its format. Pass {formats()}; or pass --task.")


def first_record_fields(path):
    """The field names of a JSONL/CSV/TSV file's first record."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            if path.suffix.lower() in (".jsonl", ".ndjson"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return []
                return list(record) if isinstance(record, dict) else []
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            return [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]
    return []


def looks_like_conll(path, lines=20):
    """Its first `lines` non-blank lines (past `-DOCSTART-`) all end in a tag.

    Raises:
        ValueError: the file starts as a CoNLL file, then a line among the
            first `lines` is not one: that line is named (file:line).
    """
    seen = 0
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                continue
            if not CONLL_LINE.match(line):
                if seen:
                    raise ValueError(
                        f"{path}:{number}: {line[:60]!r} is not 'word<TAB>tag' (a BIO/IOBES tag last), "
                        f"though the {seen} line(s) before it are: fix that line (sentences are separated "
                        "by blank lines)."
                    )
                return False
            seen += 1
            if seen == lines:
                break
    return seen > 0


def looks_like_squad(path):
    """A SQuAD-format JSON: {"data": [{"paragraphs": [...]}, ...]}."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(4096)
    return '"data"' in head and '"paragraphs"' in head
