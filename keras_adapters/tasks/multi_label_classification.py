"""Multi-label classification: any number of labels per text (none too).

Data:
- a `.jsonl` file whose records hold a text and a list of labels
  (`{"text": "...", "labels": ["sport", "politics"]}`; `[]` for none), or a
  `.csv` / `.tsv` file whose labels column holds them `;`-separated
  (`sport;politics`, empty for none);
- a folder with one sub-folder per label, a text in every label folder it
  has (the same file name, the same text).

The head gives each label an independent probability (a sigmoid); a label is
predicted when its probability reaches its threshold. Thresholds start at
0.5 and a training run with validation data tunes each label's to the value
that maximises that label's F1 on the validation data; they are saved with
the adapter, and serving and `predict` use them. Reports give micro- and
macro-F1, per-label precision/recall/F1 and exact match (every label right).

Example:
```python
train = ka.multi_label_dataset("tweets.jsonl", model.preprocessor)
model = ka.AdapterTextClassifier.from_preset(
    ka.default_preset(), num_classes=len(train.class_names), class_names=train.class_names,
    task="multi_label_classification")
model.fit(train, epochs=3)
```
"""

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_adapters.io import records
from keras_adapters.methods import per_example
from keras_adapters.io import text_data as data_lib
from keras_adapters.tasks.base import SAMPLE_SIZE
from keras_adapters.tasks.base import Task
from keras_adapters.tasks.base import TaskServing
from keras_adapters.tasks.routing import padded_table
from keras_adapters.tasks.base import first_record_fields
from keras_adapters.tasks.base import register_task
from keras_adapters.tasks.classification import POOLINGS
from keras_adapters.tasks.classification import ClassificationHead
from keras_adapters.tasks.classification import MaskedMeanPooling
from keras_adapters.tasks.classification import TextInputs
from keras_adapters.tasks.classification import dropout_and_logits

MULTI_LABEL_CLASSIFICATION = "multi_label_classification"
#: The separator of labels in one CSV/TSV cell.
SEPARATOR = ";"
EXAMPLE = '{"text": "...", "labels": ["a", "b"]}'
#: Threshold candidates tried per label on validation data.
CANDIDATES = np.round(np.arange(0.05, 0.96, 0.05), 2)


# ------------------------------------------------------------------- head
@keras.saving.register_keras_serializable(package="keras_adapters")
class MultiLabelHead(keras.layers.Layer):
    """Pooling, dropout and a dense layer to one sigmoid probability per label.

    Args:
        num_classes: the number of labels (1 or more).
        pooling: `"cls"` or `"mean"` (see `ClassificationHead`).
        dropout: dropout before the dense layer.
        class_names: optional `num_classes` distinct label names.
        sequence_length: the tokens per text this task was trained with.
        thresholds: each label's decision threshold in (0, 1) (`None`: 0.5 each).
        task: `"multi_label_classification"`.

    Probabilities are float32 `[batch, num_classes]`, each in (0, 1), not summing to 1.

    Example:
    ```python
    head = MultiLabelHead(3, class_names=["a", "b", "c"])
    head.build(hidden_dim=384)
    probabilities = head(sequence_output, pooled_output, padding_mask)
    ```
    """

    text_inputs = 1

    def __init__(self, num_classes, pooling="cls", dropout=0.1, class_names=None, sequence_length=None,
                 thresholds=None, task=MULTI_LABEL_CLASSIFICATION, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1 (the labels), got {num_classes!r}.")
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != num_classes or len(set(class_names)) != num_classes:
                raise ValueError(f"class_names must be {num_classes} distinct names, got {class_names}.")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if str(task).replace("-", "_") != MULTI_LABEL_CLASSIFICATION:
            raise ValueError(f"A MultiLabelHead gives labels to texts, not {task!r}.")
        self.task, self.num_classes, self.class_names = MULTI_LABEL_CLASSIFICATION, num_classes, class_names
        self.pooling, self.dropout_rate, self.sequence_length = pooling, dropout, sequence_length
        self.thresholds = check_thresholds(thresholds, num_classes)
        self.mean_pooling = MaskedMeanPooling(dtype=self.dtype_policy, name="mean_pooling")
        self.dropout, self.logits = dropout_and_logits(self, num_classes, dropout)

    build = ClassificationHead.build
    weights_by_key = ClassificationHead.weights_by_key
    label_names = ClassificationHead.label_names

    def call(self, sequence_output, pooled_output, padding_mask, training=None):
        pooled = pooled_output if self.pooling == "cls" else self.mean_pooling(sequence_output, padding_mask)
        logits = per_example.dense(self.logits, self.dropout(pooled, training=training))
        return ops.sigmoid(ops.cast(logits, "float32"))

    def start_from_prior(self, prior):
        """Set the bias so that, before training, label i's probability is
        `prior[i]` (its share of the training texts; see
        `classification.start_from_prior` for why)."""
        rates = np.asarray(prior, dtype="float64").reshape(-1)
        if rates.size != self.num_classes or not np.all((rates > 0) & (rates < 1)):
            raise ValueError(
                f"class_prior must be {self.num_classes} numbers in (0, 1), each label's share of the "
                f"training texts (the dataset's `class_prior`), got {list(np.asarray(prior).reshape(-1))}."
            )
        self.logits.bias.assign(np.log(rates / (1.0 - rates)).astype("float32"))

    def task_config(self):
        return {
            "num_classes": self.num_classes, "class_names": self.class_names, "pooling": self.pooling,
            "dropout": self.dropout_rate, "sequence_length": self.sequence_length, "task": self.task,
            "thresholds": list(self.thresholds),
        }

    def compute_output_shape(self, sequence_shape, pooled_shape, mask_shape):
        return (sequence_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), **self.task_config()}


def check_thresholds(thresholds, count):
    """`thresholds` as `count` floats in (0, 1); `None` -> 0.5 each."""
    if thresholds is None:
        return [0.5] * count
    values = [float(t) for t in thresholds]
    if len(values) != count or not all(0.0 < t < 1.0 for t in values):
        raise ValueError(f"thresholds must be {count} numbers in (0, 1), one per label, got {list(thresholds)}.")
    return values


# ------------------------------------------------------------------- data
def _label_set(path, number, value, key):
    """The labels of one record: a JSON list of strings, or `a;b` text."""
    if isinstance(value, str):
        return sorted({v.strip() for v in value.split(SEPARATOR) if v.strip()})
    if isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value):
        return sorted({v.strip() for v in value})
    raise data_lib.DatasetError(
        f"{path}:{number}: the {key!r} field is {json.dumps(value)[:80]}; labels are a list of label names "
        f'such as ["sport", "politics"] ([] for none), or in CSV/TSV one cell "sport{SEPARATOR}politics".'
    )


def read_labelled_file(path, text_key="text", label_key="labels"):
    """(texts, label sets) of a JSONL, CSV or TSV file (see module docstring)."""
    path = Path(path)
    texts, label_sets = [], []
    for number, record in records.read_records(path, example=EXAMPLE):
        texts.append(records.field(path, number, record, text_key, "text_key"))
        if label_key not in record or record[label_key] is None:
            raise data_lib.DatasetError(
                f"{path}:{number}: no {label_key!r} field (the record has {sorted(record)}); give each text its "
                f"labels, [] for none (name the column with label_key=, CLI --label-key)."
            )
        label_sets.append(_label_set(path, number, record[label_key], label_key))
    if not texts:
        raise data_lib.DatasetError(f"{path} holds no records.")
    return texts, label_sets


def read_label_folders(directory):
    """(texts, label sets) of a folder with a sub-folder per label; a file
    in several label folders (by its name) is one text with those labels."""
    found = {}
    for label, paths in data_lib.scan_directory(directory).items():
        for path in paths:
            found.setdefault(str(Path(path).relative_to(Path(directory) / label)), []).append((label, path))
    texts, label_sets = [], []
    for name, entries in sorted(found.items()):
        contents = {Path(p).read_bytes() for _, p in entries}
        if len(contents) > 1:
            raise data_lib.DatasetError(
                f"{[p for _, p in entries]} share the name {name!r} but not their text: a text in several label "
                "folders must be the same file in each. Rename one, or make them equal."
            )
        texts.append(contents.pop().decode("utf-8", errors="replace"))
        label_sets.append(sorted(label for label, _ in entries))
    return texts, label_sets


def read_multi_label(source, text_key="text", label_key="labels"):
    """(texts, label sets) of a folder or a JSONL/CSV/TSV file."""
    if Path(source).is_dir():
        return read_label_folders(source)
    return read_labelled_file(source, text_key, label_key)


def multi_hot(label_sets, names, source):
    """float32 `[texts, labels]`: 1 where a text has the label."""
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({label for s in label_sets for label in s} - set(index))
    if unknown:
        raise data_lib.DatasetError(
            f"{source} has label(s) {unknown[:10]} that the model does not know; its labels are {list(names)}."
        )
    out = np.zeros((len(label_sets), len(names)), np.float32)
    for row, labels in enumerate(label_sets):
        out[row, [index[label] for label in labels]] = 1.0
    return out


def multi_label_dataset(
    source, preprocessor, batch_size=32, validation_split=None, subset=None, seed=None, class_names=None,
    shuffle=True, bucket_by_sequence_length=False, bucket_boundaries=data_lib.DEFAULT_BUCKETS, cache=True,
    text_key="text", label_key="labels",
):
    """A tokenized `tf.data.Dataset` of `(inputs, multi-hot labels)` batches.

    Args:
        source: a JSONL/CSV/TSV file or a folder (see module docstring).
        class_names: the run's labels in order (mapped by name); `None`:
            the data's labels, sorted.
        text_key, label_key: the columns of a file.
        Other arguments: as `text_dataset_from_directory`.

    Returns:
        A dataset (two for `subset="both"`) with `class_names`,
        `num_examples` and `label_sets` (each text's labels, in order when
        not shuffled).
    """
    texts, label_sets = read_multi_label(source, text_key, label_key)
    names = list(class_names) if class_names is not None else sorted({x for s in label_sets for x in s})
    if not names:
        raise data_lib.DatasetError(f"{source} has no labels at all; give some texts their labels.")
    labels = multi_hot(label_sets, names, source)
    parts = data_lib.split_rows(len(texts), validation_split, subset, seed, "texts", source)
    max_bytes = data_lib.BYTES_PER_TOKEN * int(preprocessor.sequence_length or 512)
    outputs = []
    for rows, training in zip(parts, data_lib.training_flags(subset if validation_split else None, shuffle)):
        ds = tf.data.Dataset.from_tensor_slices(
            (tf.constant([texts[i] for i in rows], tf.string), tf.constant(labels[rows].reshape(-1, len(names))))
        )
        ds = ds.map(lambda t, y: (data_lib.clean_text(t, max_bytes), y), num_parallel_calls=data_lib.AUTOTUNE)
        bucket = bucket_boundaries if bucket_by_sequence_length else None
        ds = data_lib.finish_dataset(ds, preprocessor, batch_size, training, bucket, cache, len(rows), seed)
        ds.class_names, ds.num_examples = names, len(rows)
        ds.label_sets = [label_sets[i] for i in rows]
        ds.class_prior = ((labels[rows].reshape(-1, len(names)).sum(axis=0) + 1) / (len(rows) + 2)).tolist()
        outputs.append(ds)
    return tuple(outputs) if subset == "both" else outputs[0]


# ------------------------------------------------------------ evaluation
def multi_label_report(labels, probabilities, class_names, thresholds):
    """Micro/macro-F1, exact match, log loss and per-label P/R/F1 (NumPy, float64).

    Macro-F1 averages the labels present in the data (as `classification_report`).
    """
    truth = np.asarray(labels, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities >= np.asarray(thresholds, dtype=np.float64)
    tp = (truth & predicted).sum(0)
    fp = (~truth & predicted).sum(0)
    fn = (truth & ~predicted).sum(0)
    per_label, f1s = {}, []
    for i, name in enumerate(class_names):
        precision = tp[i] / (tp[i] + fp[i]) if tp[i] + fp[i] else 0.0
        recall = tp[i] / (tp[i] + fn[i]) if tp[i] + fn[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[name] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                           "support": int(truth[:, i].sum()), "threshold": float(thresholds[i])}
        if truth[:, i].any():
            f1s.append(f1)
    hits, wrong = tp.sum(), fp.sum() + fn.sum()
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    loss = -(truth * np.log(clipped) + (~truth) * np.log(1 - clipped)).mean() if truth.size else 0.0
    return {
        "micro_f1": float(2 * hits / (2 * hits + wrong)) if hits + wrong else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "exact_match": float((predicted == truth).all(1).mean()) if len(truth) else 0.0,
        "loss": float(loss),
        "num_examples": int(len(truth)),
        "class_names": list(class_names),
        "per_label": per_label,
    }


def format_multi_label_report(result):
    width = max(12, max(len(n) for n in result["class_names"]) + 2)
    lines = [
        f"texts {result['num_examples']}   micro-F1 {result['micro_f1']:.4f}   macro-F1 {result['macro_f1']:.4f}   "
        f"exact match {result['exact_match']:.4f}   loss {result['loss']:.4f}",
        "",
        f"{'label':{width}s}{'precision':>10s}{'recall':>10s}{'f1':>10s}{'support':>10s}{'threshold':>11s}",
    ]
    for name, c in result["per_label"].items():
        lines.append(f"{name:{width}s}{c['precision']:10.4f}{c['recall']:10.4f}{c['f1']:10.4f}{c['support']:10d}"
                     f"{c['threshold']:11.2f}")
    return "\n".join(lines)


def best_thresholds(labels, probabilities, current):
    """Each label's threshold (from `CANDIDATES`) that maximises its F1 on
    these examples; labels the data never has keep `current`'s. Ties go to
    the candidate nearest 0.5."""
    truth = np.asarray(labels, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    out = list(current)
    for i in range(truth.shape[1]):
        if not truth[:, i].any():
            continue
        predicted = probabilities[:, i, None] >= CANDIDATES[None, :]
        tp = (predicted & truth[:, i, None]).sum(0)
        wrong = (predicted & ~truth[:, i, None]).sum(0) + (~predicted & truth[:, i, None]).sum(0)
        f1 = np.where(tp > 0, 2 * tp / np.maximum(2 * tp + wrong, 1), 0.0)
        best = np.flatnonzero(f1 == f1.max())
        out[i] = float(CANDIDATES[best[np.argmin(np.abs(CANDIDATES[best] - 0.5))]])
    return out


def _probabilities(model, dataset):
    labels, probabilities = [], []
    for x, y in dataset:
        probabilities.append(np.asarray(model.predict_on_batch(x), dtype=np.float64))
        labels.append(np.asarray(y))
    if not labels:
        raise data_lib.DatasetError("The data yielded no examples.")
    return np.concatenate(labels), np.concatenate(probabilities)


# --------------------------------------------------------------- serving
class MultiLabelServing(TaskServing):
    """text -> `scores` float32 [None, L], `predicted` bool [None, L] (score
    >= its label's threshold), `labels` string [None, L] (the predicted
    labels' names, `""` elsewhere) and `num_labels` int32 [None].

    Routed, L is the most labels of the served adapters; a row's columns past
    its adapter's labels score 0 and are never predicted.
    """

    text_signature = [tf.TensorSpec([None], tf.string, name="text")]
    cuts_token_padding = True

    def __init__(self, model, length, router=None):
        super().__init__(model, length, router)
        self.names = padded_table([h.label_names() for h in self.heads], "")
        self.thresholds = padded_table([h.thresholds for h in self.heads], np.inf, tf.float32)
        self.inputs = TextInputs(model.preprocessor, self.length)

    def serve_text(self, *inputs):
        (text,), ids = self.route(inputs, tf.size(tf.reshape(inputs[0], [-1])))
        scores = self.run_cut(self.inputs(text, tf.gather(self.lengths, ids)), ids)
        predicted = scores >= tf.gather(self.thresholds, ids)
        labels = tf.where(predicted, tf.gather(self.names, ids), "")
        count = tf.reduce_sum(tf.cast(predicted, tf.int32), axis=1)
        return {"scores": scores, "predicted": predicted, "labels": labels, "num_labels": count}

    def narrow(self, outputs, index):
        width = self.heads[index].num_classes
        return {k: v if k == "num_labels" else v[:, :width] for k, v in outputs.items()}


# ------------------------------------------------------------------ task
class MultiLabelClassification(Task):
    """Any number of labels per text (see module docstring)."""

    name = MULTI_LABEL_CLASSIFICATION
    head_class = MultiLabelHead
    head_settings = ("thresholds",)
    #: Threshold-free: rare labels stay under 0.5 for epochs while the model
    #: learns to rank them (on WNUT-16 types, validation micro-F1 at 0.5 picked
    #: epoch 1 of 5 for both full fine-tuning and LoRA).
    monitor = "auc"
    signature_verb = "label"
    routable = True
    served_outputs = "scores, predicted, labels, num_labels"
    unit = "text"
    data_formats = ("a .jsonl file whose 'labels' are lists, a .csv/.tsv file with ';'-separated labels, or a "
                    "folder with a sub-folder per label (multi-label-classification)")

    def loss(self):
        return keras.losses.BinaryCrossentropy()

    def metrics(self, num_classes, class_names=None):
        return [
            keras.metrics.AUC(multi_label=True, num_labels=num_classes, name="auc"),
            keras.metrics.F1Score(average="micro", threshold=0.5, name="micro_f1"),
            keras.metrics.F1Score(average="macro", threshold=0.5, name="macro_f1"),
        ]

    def check_labels(self, y, x, num_classes, class_names=None, source="y"):
        values = np.asarray(y)
        if values.ndim != 2 or values.shape[1] != num_classes or not np.isin(values, (0, 1)).all():
            raise ValueError(
                f"{source} must be a 0/1 matrix [examples, {num_classes}] (1 where the text has the label), "
                f"got shape {values.shape}" + ("" if values.ndim != 2 else f" with values {np.unique(values)[:5]}")
                + "."
            )

    def check_inputs(self, x, adapter):
        if isinstance(x, tuple):
            raise ValueError(f"Adapter {adapter!r} labels single texts, but got a tuple of {len(x)}.")

    def detect(self, path, options):
        if isinstance(path, str) or path.suffix.lower() not in (".jsonl", ".ndjson"):
            return False
        key = options.get("label_key") or "labels"
        if key not in first_record_fields(path):
            return False
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            first = next((line for line in f if line.strip()), "{}")
        try:
            return isinstance(json.loads(first).get(key), list)
        except (json.JSONDecodeError, AttributeError):
            return False

    def check_data(self, data):
        if not Path(str(data)).exists():
            raise ValueError(f"{str(data)!r} does not exist; multi-label classification reads {self.data_formats}.")

    def _options(self, options):
        kept = {k: options[k] for k in ("batch_size", "seed", "shuffle", "cache", "class_names",
                                        "bucket_by_sequence_length", "text_key") if k in options}
        kept["label_key"] = options.get("label_key") or "labels"
        return kept

    def datasets(self, data, preprocessor, validation_split, **options):
        kept = self._options(options)
        if not validation_split:
            return multi_label_dataset(data, preprocessor, **kept), None
        return multi_label_dataset(data, preprocessor, validation_split=validation_split, subset="both", **kept)

    def count_examples(self, data, options):
        kept = self._options(options)
        return len(read_multi_label(data, kept.get("text_key", "text"), kept["label_key"])[0])

    def sample_inputs(self, data, options, count=SAMPLE_SIZE):
        kept = self._options(options)
        return [read_multi_label(data, kept.get("text_key", "text"), kept["label_key"])[0][:count]]

    def tune(self, model, validation):
        """Set each label's threshold to its best F1 on `validation`."""
        labels, probabilities = _probabilities(model, validation)
        head = model.output_head
        head.thresholds = best_thresholds(labels, probabilities, head.thresholds)
        return True

    def evaluate(self, model, data, batch_size=32, **options):
        kept = {k: v for k, v in self._options(options).items() if k in ("text_key", "label_key")}
        dataset = multi_label_dataset(data, model.preprocessor, batch_size=batch_size, shuffle=False,
                                      class_names=model.class_names, **kept)
        labels, probabilities = _probabilities(model, dataset)
        return multi_label_report(labels, probabilities, model.output_head.label_names(),
                                  model.output_head.thresholds)

    def format_report(self, report):
        return format_multi_label_report(report)

    def predict(self, model, columns, batch_size=32):
        texts = list(columns[0])
        probabilities = np.asarray(model.predict(texts, batch_size=batch_size, verbose=0), dtype=np.float64)
        head = model.output_head
        names, thresholds = head.label_names(), head.thresholds
        return [
            {"text": t, "labels": [n for n, p, c in zip(names, row, thresholds) if p >= c],
             "scores": {n: round(float(p), 6) for n, p in zip(names, row)}}
            for t, row in zip(texts, probabilities)
        ]

    def format_prediction(self, result):
        text = result["text"]
        return f"{SEPARATOR.join(result['labels']) or '-'}\t{text if len(text) <= 70 else text[:67] + '...'}"

    def serving(self, model, length, router=None):
        return MultiLabelServing(model, length, router)

    def tflite_entry(self, head):
        return {**super().tflite_entry(head), "thresholds": list(head.thresholds)}

    def tflite_files(self, head):
        return {**super().tflite_files(head), "thresholds.txt": "\n".join(f"{t:g}" for t in head.thresholds) + "\n"}


TASK = register_task(MultiLabelClassification())
