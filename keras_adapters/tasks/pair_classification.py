"""Files of labelled text pairs (JSON lines, CSV, TSV) -> tokenized `tf.data`.

One example per record, with the two texts and the label in named columns
(`text_a`, `text_b`, `label` unless told otherwise):

- `.jsonl` / `.ndjson`: one JSON object per line (blank lines skipped);
- `.csv`: a header row, then comma-separated rows (quoted as Python's `csv`
  and spreadsheets write them);
- `.tsv`: a header row, then tab-separated rows with no quoting (as GLUE
  ships MNLI, whose texts hold unbalanced quotes).

Files are parsed in Python once; every per-example step after that (cutting
very long texts, replacing invalid UTF-8, tokenizing `[CLS] a [SEP] b [SEP]`
with segment ids, truncating the longer text first) runs in the `tf.data`
graph, as for directory datasets. A record without a column, a line that is
not JSON, a row with too many or too few fields, or a label the model does
not know is a `DatasetError` naming the file and line. Records with an empty
text are skipped with a warning (how many, and the first line).
"""

import json
import warnings
from pathlib import Path

import tensorflow as tf

from keras_adapters.io import records
from keras_adapters.io import text_data as data_lib
from keras_adapters.tasks.base import PAIR_CLASSIFICATION
from keras_adapters.tasks.base import PAIR_SUFFIXES
from keras_adapters.tasks.base import first_record_fields
from keras_adapters.tasks.base import register_task
from keras_adapters.tasks.classification import ClassificationTask

DEFAULT_KEYS = {"text_a_key": "text_a", "text_b_key": "text_b", "label_key": "label"}
EXAMPLE = '{"text_a": "...", "text_b": "...", "label": "..."}'


def _label(path, number, record, key):
    """A label: a string, or a whole number in JSON (`1`, not `1.0`, `true` or a list)."""
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        kind = "null" if value is None else type(value).__name__
        raise data_lib.DatasetError(
            f"{path}:{number}: the {key!r} field is {json.dumps(value)} ({kind}); a label is a string such as "
            '"entailment" or a whole number such as 1.'
        )
    return value


def _check_label_kinds(path, raw):
    """One kind of label per file: `1` and `"1"`, or `1` and `1.0` in a CSV,
    would otherwise become different classes."""
    kinds = {type(v).__name__ for _, v in raw}
    if len(kinds) > 1:
        first = {kind: next((n, v) for n, v in raw if type(v).__name__ == kind) for kind in sorted(kinds)}
        shown = "; ".join(f"line {n}: {json.dumps(v)}" for n, v in first.values())
        raise data_lib.DatasetError(f"{path} mixes numbers and strings as labels ({shown}); use one kind.")
    texts = [str(v).strip() for _, v in raw]
    numeric = {}
    for (number, _), text in zip(raw, texts):
        try:
            value = float(text)
        except ValueError:
            continue
        other = numeric.setdefault(value, (number, text))
        if other[1] != text:
            raise data_lib.DatasetError(
                f"{path} writes one label two ways: {other[1]!r} (line {other[0]}) and {text!r} (line {number}) "
                "would be two classes; write each label one way."
            )


def read_pairs(path, text_a_key="text_a", text_b_key="text_b", label_key="label", labelled=True):
    """Read a pair file.

    Args:
        path: a `.jsonl`, `.ndjson`, `.csv` or `.tsv` file.
        text_a_key, text_b_key, label_key: the columns to read.
        labelled: `False` reads texts only (the label column may be absent).

    Returns:
        (texts_a, texts_b, labels): lists of strings (`labels` is `None`
        unlabelled). Labelled records with an empty text are skipped, with a
        warning; unlabelled ones are kept (each gets a prediction, in order).

    Raises:
        DatasetError: the file is missing, malformed or has no usable record;
            the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise data_lib.DatasetError(f"Pair file {str(path)!r} does not exist.")
    texts_a, texts_b, raw, empty = [], [], [], []
    for number, record in records.read_records(path, example=EXAMPLE):
        a = records.field(path, number, record, text_a_key, "text_a_key")
        b = records.field(path, number, record, text_b_key, "text_b_key")
        if labelled:
            records.field(path, number, record, label_key, "label_key")
            label = _label(path, number, record, label_key)
            if not str(label).strip():
                raise data_lib.DatasetError(f"{path}:{number}: the {label_key!r} field is empty.")
        if labelled and (not a.strip() or not b.strip()):
            empty.append(number)
            continue
        texts_a.append(a)
        texts_b.append(b)
        if labelled:
            raw.append((number, label))
    _check_label_kinds(path, raw)
    labels = [str(v).strip() for _, v in raw]
    if empty:
        warnings.warn(f"Skipping {len(empty)} record(s) of {path} with an empty text (e.g. line {empty[0]}).",
                      stacklevel=2)
    if not texts_a:
        raise data_lib.DatasetError(f"{path} holds no record with two non-empty texts." if labelled else
                                    f"{path} holds no record.")
    return texts_a, texts_b, labels if labelled else None


def label_order(labels):
    """Class names in label order: sorted, numerically when every label is an integer."""
    names = sorted(set(labels))
    if all(n.lstrip("-").isdigit() for n in names):
        names.sort(key=int)
    return names


def _label_ids(path, labels, class_names):
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise data_lib.DatasetError(
            f"{path} has label(s) {unknown[:10]} that the model does not know; its classes are {list(class_names)}."
        )
    return [index[label] for label in labels]


def pair_dataset_from_file(
    path,
    preprocessor,
    batch_size=32,
    validation_split=None,
    subset=None,
    seed=None,
    class_names=None,
    shuffle=True,
    bucket_by_sequence_length=False,
    bucket_boundaries=data_lib.DEFAULT_BUCKETS,
    cache=True,
    text_a_key="text_a",
    text_b_key="text_b",
    label_key="label",
):
    """A tokenized `tf.data.Dataset` of `((a, b) tokens, label)` batches from a pair file.

    Args:
        path: a `.jsonl`, `.csv` or `.tsv` file (see module docstring).
        preprocessor: the model's keras-hub preprocessor; its
            `sequence_length` bounds `[CLS] a [SEP] b [SEP]` (the longer
            text is cut first).
        validation_split, subset, seed: as `text_dataset_from_directory`:
            a seeded random `validation_split` of the records is held out.
        class_names: the run's classes in label order (labels are mapped by
            name); `None`: the file's labels, sorted (`label_order`).
        text_a_key, text_b_key, label_key: the columns.
        Other arguments: as `text_dataset_from_directory`.

    Returns:
        A dataset (two for `subset="both"`) with `class_names` and
        `num_examples` attributes.

    Example:
    ```python
    train, val = pair_dataset_from_file(
        "nli/train.jsonl", model.preprocessor, validation_split=0.1,
        subset="both", seed=1)
    model.fit(train, validation_data=val, epochs=3)
    ```
    """
    texts_a, texts_b, labels = read_pairs(path, text_a_key, text_b_key, label_key)
    names = list(class_names) if class_names is not None else label_order(labels)
    if class_names is None and len(names) < 2:
        raise data_lib.DatasetError(f"{path} has a single label {names}; a classifier needs at least two.")
    ids = _label_ids(path, labels, names)
    parts = data_lib.split_rows(len(ids), validation_split, subset, seed, "records", path)
    max_bytes = data_lib.BYTES_PER_TOKEN * int(preprocessor.sequence_length or 512)
    outputs = []
    for rows, training in zip(parts, data_lib.training_flags(subset if validation_split else None, shuffle)):
        ds = tf.data.Dataset.from_tensor_slices(
            ((tf.constant([texts_a[i] for i in rows], tf.string), tf.constant([texts_b[i] for i in rows], tf.string)),
             tf.constant([ids[i] for i in rows], tf.int32))
        )
        ds = ds.map(
            lambda pair, label: ((data_lib.clean_text(pair[0], max_bytes), data_lib.clean_text(pair[1], max_bytes)),
                                 label),
            num_parallel_calls=data_lib.AUTOTUNE,
        )
        bucket = bucket_boundaries if bucket_by_sequence_length else None
        ds = data_lib.finish_dataset(ds, preprocessor, batch_size, training, bucket, cache, len(rows), seed)
        ds.class_names = names
        ds.num_examples = len(rows)
        ds.class_prior = data_lib.class_prior([ids[i] for i in rows], len(names))
        outputs.append(ds)
    return tuple(outputs) if subset == "both" else outputs[0]



class PairClassification(ClassificationTask):
    """One label per pair of texts (`[CLS] a [SEP] b [SEP]`), from a JSONL,
    CSV or TSV file with two text columns (`pair_dataset_from_file`)."""

    name = PAIR_CLASSIFICATION
    input_fields = ("text_a", "text_b")
    unit = "record"
    routable = True
    routed_signature = "classify_pairs"
    data_formats = "a .jsonl, .csv or .tsv file with two text columns (pair-classification)"

    def detect(self, path, options):
        return (
            not isinstance(path, str)
            and path.suffix.lower() in PAIR_SUFFIXES
            and options.get("text_b_key", "text_b") in first_record_fields(path)
        )

    def check_data(self, data):
        if not Path(str(data)).is_file():
            raise ValueError(f"Pair classification reads a .jsonl, .csv or .tsv file; {str(data)!r} is not a file.")

    def datasets(self, data, preprocessor, validation_split, **options):
        refused = sorted(k for k in ("stride", "max_question_length", "max_answer_length")
                         if options.get(k) is not None)
        if refused:
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in refused)}: only for question answering.")
        options = {k: v for k, v in options.items() if k not in ("split", "text_key", "data_dir", *refused)}
        for key in ("stride", "max_question_length", "max_answer_length"):
            options.pop(key, None)
        if not validation_split:
            return pair_dataset_from_file(data, preprocessor, **options), None
        return pair_dataset_from_file(data, preprocessor, validation_split=validation_split, subset="both", **options)

    def read_inputs(self, path, options):
        if str(path) == "-":
            raise ValueError("This run classifies text pairs: pass --file with a .jsonl, .csv or .tsv file.")
        keys = {k: options[k] for k in ("text_a_key", "text_b_key") if options.get(k)}
        a, b, _ = read_pairs(path, **keys, labelled=False)
        return [a, b]

    def count_examples(self, data, options):
        keys = {k: options[k] for k in DEFAULT_KEYS if k in options}
        return len(read_pairs(data, **keys)[0])

    def evaluation_dataset(self, model, data, batch_size, **options):
        keys = {k: options[k] for k in DEFAULT_KEYS if k in options}
        return pair_dataset_from_file(
            data, model.preprocessor, batch_size=batch_size, shuffle=False, class_names=model.class_names, **keys
        )


TASK = register_task(PairClassification())
