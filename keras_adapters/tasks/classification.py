"""What text and pair classification share: the head, label checks, the
report, predictions and the serving functions (one label per example)."""

import numbers

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_adapters.core import recipe
from keras_adapters.io import text_data as data_lib
from keras_adapters.methods.base import gather_rows
from keras_adapters.methods.base import pad_axis
from keras_adapters.methods import per_example
from keras_adapters.tasks.base import CLASSIFICATION_TASKS
from keras_adapters.tasks.base import PAIR_CLASSIFICATION
from keras_adapters.tasks.base import TEXT_CLASSIFICATION
from keras_adapters.tasks.base import Task
from keras_adapters.tasks.base import TaskServing
from keras_adapters.tasks.routing import padded_table
from keras_adapters.tasks.routing import settings_index

MULTI_LABEL_REMOVED = (
    "multi_label heads were removed in keras-adapters 0.4 (evaluate, predict and serving answered "
    "them with argmax). For several labels per text use task=\"multi_label_classification\" (CLI "
    "--task multi-label-classification) and retrain: a sigmoid head with per-label thresholds."
)
POOLINGS = ("cls", "mean")
#: A classifier may also read the `[CLS]` token's last hidden state itself (AdapterHub's heads).
CLASSIFIER_POOLINGS = POOLINGS + ("cls_token",)


@keras.saving.register_keras_serializable(package="keras_adapters")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of the token vectors where `padding_mask` is true.

    Example:
    ```python
    MaskedMeanPooling()(sequence_output, padding_mask)  # (batch, hidden)
    ```
    """

    def call(self, sequence, padding_mask):
        mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
        total = ops.sum(sequence * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), ops.cast(1.0, mask.dtype))
        return total / count

    def compute_output_shape(self, sequence_shape, padding_mask_shape):
        return (sequence_shape[0], sequence_shape[-1])


def check_classes(num_classes, class_names):
    """`class_names` as a list of distinct strings, or `None`; raises on bad input."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if class_names is None:
        return None
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes or len(set(class_names)) != num_classes:
        raise ValueError(f"class_names must be {num_classes} distinct names, got {class_names}.")
    return class_names


def prior_logits(prior, num_classes):
    """Logits whose softmax is `prior` (centred: softmax ignores a common shift).

    `prior`: `num_classes` positive numbers, each class's share of the
    training labels (or their counts; they are normalised).
    """
    values = np.asarray(prior, dtype="float64").reshape(-1)
    if values.size != num_classes or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"class_prior must be {num_classes} positive numbers (each class's share of the training "
            f"labels, e.g. the dataset's `class_prior`), got {list(np.asarray(prior).reshape(-1))}."
        )
    log = np.log(values / values.sum())
    return (log - log.mean()).astype("float32")


def start_from_prior(head, prior):
    """Set a softmax head's bias so that, before training, it predicts `prior`.

    Why: the bias moves about one learning rate per Adam step, so with a
    zero bias a rare class stays thousands of steps away from its log
    frequency (WNUT-16's `O` tag is 6 nats above an entity tag). Adapters
    then learn the frequencies by distorting every token's vector, and
    taggers collapse to `O` (BENCHMARKS.md, tagging).
    """
    head.logits.bias.assign(prior_logits(prior, head.num_classes))


def dropout_and_logits(head, num_classes, dropout):
    """A head's dropout and its dense layer to `num_classes` logits (BERT's init)."""
    return (
        keras.layers.Dropout(dropout, dtype=head.dtype_policy, name="classifier_dropout"),
        keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=head.dtype_policy,
            name="logits",
        ),
    )


@keras.saving.register_keras_serializable(package="keras_adapters")
class ClassificationHead(keras.layers.Layer):
    """Pooling, dropout and a dense layer to class probabilities.

    Args:
        num_classes: number of classes (2 or more).
        pooling: `"cls"` (the backbone's pooled `[CLS]` output), `"mean"`
            (mean of the token vectors where the padding mask is true) or
            `"cls_token"` (the `[CLS]` token's last hidden state, without
            BERT's pooler).
        dropout: dropout before the classification layer (and before the
            hidden layer).
        hidden_activation: with an activation name (e.g. `"tanh"`), a dense
            layer of the hidden size with that activation comes before the
            classification layer (AdapterHub's two-layer classification head).
        class_names: optional `num_classes` distinct names.
        sequence_length: the tokens per text this task was trained with
            (recorded with the adapter; exported text signatures cut each
            task's texts to it). `None`: the model's.
        task: `"text_classification"` (one text per example) or
            `"pair_classification"` (two: `[CLS] a [SEP] b [SEP]`, segment
            ids 0 and 1; fit and predict take `(texts_a, texts_b)`).

    Probabilities are float32 whatever the dtype policy, for a stable loss.

    Example:
    ```python
    head = ClassificationHead(3, pooling="mean")
    head.build(hidden_dim=384)
    probabilities = head(sequence_output, pooled_output, padding_mask)
    ```
    """

    def __init__(
        self,
        num_classes,
        pooling="cls",
        dropout=0.1,
        class_names=None,
        sequence_length=None,
        task=TEXT_CLASSIFICATION,
        hidden_activation=None,
        **kwargs,
    ):
        if kwargs.pop("multi_label", False):
            raise ValueError(MULTI_LABEL_REMOVED)
        super().__init__(**kwargs)
        task = str(task).replace("-", "_")
        if task not in CLASSIFICATION_TASKS:
            raise ValueError(f"A ClassificationHead classifies texts or text pairs, not {task!r}.")
        self.task = task
        self.class_names = check_classes(num_classes, class_names)
        if pooling not in CLASSIFIER_POOLINGS:
            raise ValueError(f"pooling must be one of {CLASSIFIER_POOLINGS}, got {pooling!r}.")
        if sequence_length is not None and (
            isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 3
        ):
            raise ValueError(f"sequence_length must be an integer >= 3 or None, got {sequence_length!r}.")
        self.sequence_length = sequence_length
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.dropout_rate = dropout
        self.mean_pooling = MaskedMeanPooling(dtype=self.dtype_policy, name="mean_pooling")
        self.dropout, self.logits = dropout_and_logits(self, num_classes, dropout)
        if hidden_activation is not None:
            keras.activations.get(hidden_activation)  # an unknown name fails here, with Keras' message
        self.hidden_activation = hidden_activation
        self.hidden = None  # made in build: its width is the backbone's

    def build(self, hidden_dim):
        if getattr(self, "hidden_activation", None) is not None:  # the multi-label head borrows build
            self.hidden = keras.layers.Dense(
                int(hidden_dim), activation=self.hidden_activation, dtype=self.dtype_policy, name="hidden",
                kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            )
            self.hidden.build((None, int(hidden_dim)))
        self.logits.build((None, int(hidden_dim)))
        self.built = True

    def pool(self, sequence_output, pooled_output, padding_mask):
        """One vector per example, as `pooling` says."""
        if self.pooling == "cls":
            return pooled_output
        if self.pooling == "cls_token":
            return sequence_output[:, 0]
        return self.mean_pooling(sequence_output, padding_mask)

    def call(self, sequence_output, pooled_output, padding_mask, training=None):
        pooled = self.pool(sequence_output, pooled_output, padding_mask)
        if self.hidden is not None:
            pooled = per_example.dense(self.hidden, self.dropout(pooled, training=training))
        logits = per_example.dense(self.logits, self.dropout(pooled, training=training))
        logits = ops.cast(logits, "float32")
        return ops.softmax(logits, axis=-1)

    start_from_prior = start_from_prior

    def weights_by_key(self):
        """{key: variable}, keyed as adapter folders are (`logits/kernel`)."""
        # Other tasks' heads borrow this method (and task_config): they have no hidden layer.
        hidden = getattr(self, "hidden", None)
        layers = [self.logits] + ([hidden] if hidden is not None else [])
        return {f"{layer.name}/{w.name}": w for layer in layers for w in layer.weights}

    def task_config(self):
        config = {
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "pooling": self.pooling,
            "dropout": self.dropout_rate,
            "sequence_length": self.sequence_length,
            "task": self.task,
        }
        if getattr(self, "hidden_activation", None) is not None:  # folders without one stay as they were
            config["hidden_activation"] = self.hidden_activation
        return config

    @property
    def text_inputs(self):
        """Texts per example: 1, or 2 for pairs."""
        return 2 if self.task == PAIR_CLASSIFICATION else 1

    def label_names(self):
        return self.class_names or [str(i) for i in range(self.num_classes)]

    def compute_output_shape(self, sequence_shape, pooled_shape, mask_shape):
        return (sequence_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(self.task_config())
        return config


def routed_probabilities(heads, ids, sequence_output, pooled_output, padding_mask):
    """Each row through its own head, with the heads' weights gathered per row.

    Args:
        heads: the `ClassificationHead`s of a `Route`, in its order.
        ids: int32 `[batch]`, each row's index into `heads`.
        sequence_output, pooled_output, padding_mask: the backbone's outputs.

    Returns:
        float32 `[batch, K]`, K the largest head's class count; a row's
        columns past its head's classes are exactly 0 (they are masked out of
        the softmax, so its own columns are what its head alone gives).
    """
    width = max(h.num_classes for h in heads)
    if any(getattr(h, "hidden", None) is not None or h.pooling == "cls_token" for h in heads):
        # Heads of different shapes: each head on every row, each row keeps its own head's answer.
        every = ops.stack([pad_axis(h(sequence_output, pooled_output, padding_mask), width, 1) for h in heads])
        return ops.einsum("bh,hbk->bk", ops.one_hot(ids, len(heads), dtype=every.dtype), every)

    def rows(values, dtype, role=None):
        return gather_rows(values, ids, dtype, key=role and f"heads/{'+'.join(h.name for h in heads)}/{role}")

    poolings = {h.pooling for h in heads}
    if poolings == {"cls"}:
        pooled = pooled_output
    else:
        mean = heads[0].mean_pooling(sequence_output, padding_mask)
        is_mean = rows([h.pooling == "mean" for h in heads], "bool")
        pooled = mean if poolings == {"mean"} else ops.where(is_mean[:, None], mean, pooled_output)
    dtype = pooled.dtype
    kernel = rows(lambda: [pad_axis(h.logits.kernel, width, 1) for h in heads], dtype, "kernel")
    bias = rows(lambda: [pad_axis(h.logits.bias, width, 0) for h in heads], dtype, "bias")
    logits = ops.cast(ops.einsum("bh,bhk->bk", pooled, kernel) + bias, "float32")
    valid = rows([[j < h.num_classes for j in range(width)] for h in heads], "bool")
    logits = ops.where(valid, logits, float("-inf"))
    return ops.softmax(logits, axis=-1)


def classification_report(labels, probabilities, class_names):
    """Accuracy, macro-F1, log loss, per-class P/R/F1 and the confusion matrix.

    Computed in NumPy (float64) from the model's probabilities, independent
    of the Keras metrics used during training.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    f1s = []
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        support = int(confusion[i].sum())
        predicted_count = confusion[:, i].sum()
        precision = tp / predicted_count if predicted_count else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": support,
        }
        if support:
            f1s.append(f1)
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        # Over the classes present in the data, so a subset folder is fair.
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "loss": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()) if len(labels) else 0.0,
        "num_examples": int(len(labels)),
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def format_report(result):
    """A readable text report: summary, per-class table, confusion matrix."""
    names = result["class_names"]
    width = max(12, max(len(n) for n in names) + 2)
    lines = [
        f"examples {result['num_examples']}   accuracy {result['accuracy']:.4f}   "
        f"macro-F1 {result['macro_f1']:.4f}   loss {result['loss']:.4f}",
        "",
        f"{'class':{width}s}{'precision':>10s}{'recall':>10s}{'f1':>10s}{'support':>10s}",
    ]
    for name in names:
        c = result["per_class"][name]
        lines.append(
            f"{name:{width}s}{c['precision']:10.4f}{c['recall']:10.4f}{c['f1']:10.4f}{c['support']:10d}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max(6, max(len(n) for n in names) + 1)
    lines.append(" " * width + "".join(f"{n[:cell - 1]:>{cell}s}" for n in names))
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(f"{name:{width}s}" + "".join(f"{v:{cell}d}" for v in row))
    return "\n".join(lines)


def predict_texts(model, texts, batch_size=32):
    """[{"label": name, "label_id": i, "probabilities": {name: p}}] per text
    (`texts`: a list of strings, or a tuple `(texts_a, texts_b)` of pairs)."""
    texts = tuple(list(t) for t in texts) if isinstance(texts, tuple) else list(texts)
    probabilities = model.predict(texts, batch_size=batch_size, verbose=0)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    out = []
    for row in np.asarray(probabilities, dtype=np.float64):
        best = int(row.argmax())
        out.append(
            {
                "label": names[best],
                "label_id": best,
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)},
            }
        )
    return out


def check_labels(labels, num_classes, class_names=None, source="y"):
    """Refuse labels that are not class indices in `[0, num_classes)`.

    Keras would truncate 1.5 to 1 and stop mid-epoch on 7 with a long
    TensorFlow error; this names the first offending label and its index.
    """
    values = np.asarray(labels)
    flat = values.reshape(-1)
    classes = f" ({', '.join(class_names)})" if class_names else ""
    if values.dtype.kind not in "iuf":
        raise ValueError(
            f"{source} holds {values.dtype} values (e.g. {flat[0]!r}); labels are class indices "
            f"0..{num_classes - 1}{classes}."
        )
    problems = (
        ("is not a whole number", np.flatnonzero(flat != np.round(flat))),
        (f"is outside [0, {num_classes})", np.flatnonzero((flat < 0) | (flat >= num_classes))),
    )
    for what, where in problems:
        if where.size:
            i = int(where[0])
            raise ValueError(
                f"{source}[{i}] = {flat[i].item()!r} {what}: labels are class indices 0..{num_classes - 1}"
                f"{classes} ({where.size} such label(s))."
            )


def outputs(probabilities, labels):
    """The text signatures' outputs; `labels(label_id)` names the classes."""
    probabilities = tf.cast(probabilities, tf.float32)
    label_id = tf.argmax(probabilities, axis=-1)
    return {"probabilities": probabilities, "label_id": label_id, "label": labels(label_id)}



class TextInputs:
    """Raw text -> the model's token inputs, each row cut to its own length.

    Tasks of one SavedModel may have been trained at different sequence
    lengths; each row gets exactly the tokens its own model would (the text
    cut to `BYTES_PER_TOKEN * length` bytes as in training, invalid UTF-8
    replaced, the first `length - 2` word pieces between `[CLS]` and
    `[SEP]`), padded to the longest length, so a row's output does not depend
    on the other rows' tasks. One tokenizer pass for the whole batch.
    """

    def __init__(self, preprocessor, width):
        import keras_hub

        tokenizer = preprocessor.tokenizer
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.packer = keras_hub.layers.MultiSegmentPacker(
            start_value=tokenizer.start_token_id,
            end_value=tokenizer.end_token_id,
            pad_value=tokenizer.pad_token_id,
            sequence_length=int(width),
        )

    def __call__(self, text, lengths):
        text = tf.reshape(text, [-1])
        lengths = tf.broadcast_to(tf.cast(lengths, tf.int32), tf.shape(text))
        cut = tf.strings.substr(text, tf.zeros_like(lengths), data_lib.BYTES_PER_TOKEN * lengths)
        text = data_lib.clean_text(cut)
        tokens = self.tokenizer(text)
        positions = tf.ragged.range(tf.cast(tokens.row_lengths(), tf.int32))
        tokens = tf.ragged.boolean_mask(tokens, positions < tf.expand_dims(lengths - 2, 1))
        token_ids, segment_ids = self.packer(tokens)
        return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": token_ids != self.pad_id}


class PairInputs:
    """Two raw texts per row -> `[CLS] a [SEP] b [SEP]` token inputs, as in training.

    Each text is cut to the bytes the sequence length can use and cleaned
    (`data.clean_text`), then tokenized and packed as the model's
    preprocessor does (its tokenizer, a `MultiSegmentPacker` with its
    truncation: the longer text is truncated first), so served inputs are
    exactly the training pipeline's. With several `lengths` (routed pairs),
    each row is packed at its own length (`length_index`) and padded to the
    longest.
    """

    def __init__(self, preprocessor, lengths):
        self.preprocessor = preprocessor
        self.lengths = [int(n) for n in (lengths if isinstance(lengths, (list, tuple)) else [lengths])]
        if getattr(preprocessor, "packer", None) is None:
            preprocessor.build(None)  # keras-hub makes its packer on first use
        config = preprocessor.packer.get_config()
        # The preprocessor's own packer settings (separator, truncation), at each length.
        self.packers = [type(preprocessor.packer).from_config({**config, "sequence_length": n}) for n in self.lengths]

    def __call__(self, text_a, text_b, length_index=None):
        text_a, text_b = tf.reshape(text_a, [-1]), tf.reshape(text_b, [-1])
        check = tf.debugging.assert_equal(
            tf.size(text_a), tf.size(text_b),
            message="text_a and text_b need the same number of rows (one pair per row)",
        )
        if length_index is None:
            length_index = tf.zeros(tf.shape(text_a), tf.int32)
        with tf.control_dependencies([check]):
            cut = data_lib.BYTES_PER_TOKEN * tf.gather(self.lengths, length_index)
            pair = tuple(self.preprocessor.tokenizer(data_lib.clean_text(tf.strings.substr(t, 0 * cut, cut)))
                         for t in (text_a, text_b))
        width, pad = max(self.lengths), self.preprocessor.tokenizer.pad_token_id
        packed = [tf.pad(ids, [[0, 0], [0, width - n]], constant_values=fill)
                  for n, packer in zip(self.lengths, self.packers)
                  for ids, fill in zip(packer(pair), (pad, 0))]  # token ids, segment ids, per length
        rows = tf.stack([tf.cast(length_index, tf.int32), tf.range(tf.size(text_a))], axis=1)
        token_ids = tf.gather_nd(tf.stack(packed[0::2]), rows)
        segment_ids = tf.gather_nd(tf.stack(packed[1::2]), rows)
        return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": token_ids != pad}


class ClassificationServing(TaskServing):
    """A classification adapter's functions: text(s) -> probabilities, label.

    Routed (several adapters), `probabilities` is as wide as the most classes;
    a row's columns past its adapter's classes are 0.
    """

    cuts_token_padding = True

    def __init__(self, model, length, router=None):
        super().__init__(model, length, router)
        self.class_names = padded_table([h.label_names() for h in self.heads], "")
        self.pairs = self.heads[0].text_inputs == 2
        if self.pairs:
            self.distinct, index = settings_index(self.lengths)
            self.length_index = tf.constant(index, tf.int32)
            self.inputs = PairInputs(model.preprocessor, self.distinct)
        else:
            self.inputs = TextInputs(model.preprocessor, self.length)
        names = ("text_a", "text_b") if self.pairs else ("text",)
        self.text_signature = [tf.TensorSpec([None], tf.string, name=n) for n in names]

    def serve_text(self, *inputs):
        texts, ids = self.route(inputs, tf.size(tf.reshape(inputs[0], [-1])))
        if self.pairs:
            tokens = self.inputs(*texts, tf.gather(self.length_index, ids))
        else:
            tokens = self.inputs(texts[0], tf.gather(self.lengths, ids))
        return self._outputs(self.run_cut(tokens, ids), ids)

    def token_outputs(self, probabilities, ids):
        if self.router is None:  # one output, as before (TF Serving's REST answers it bare)
            return super().token_outputs(probabilities, ids)
        return self._outputs(probabilities, ids)

    def _outputs(self, probabilities, ids):
        return outputs(probabilities, lambda label_id: tf.gather_nd(
            self.class_names, tf.stack([tf.cast(ids, tf.int64), label_id], axis=1)))

    def narrow(self, outputs, index):
        return {**outputs, "probabilities": outputs["probabilities"][:, : self.heads[index].num_classes]}


class ClassificationTask(Task):
    """One label per example, from a softmax over the classes."""

    head_class = ClassificationHead
    head_settings = ("hidden_activation",)

    def metrics(self, num_classes, class_names=None):
        return recipe.classification_metrics(num_classes)

    def check_labels(self, y, x, num_classes, class_names=None, source="y"):
        check_labels(y, num_classes, class_names, source)

    def check_inputs(self, x, adapter):
        pair = isinstance(x, (tuple, list)) and len(x) == 2 and not isinstance(x[0], str)
        if len(self.input_fields) == 2 and not pair:
            raise ValueError(
                f"Adapter {adapter!r} classifies text pairs: pass a tuple "
                "(texts_a, texts_b) of two equally long lists (or arrays) of strings."
            )
        if len(self.input_fields) == 1 and isinstance(x, tuple):
            raise ValueError(
                f"Adapter {adapter!r} classifies single texts, but got a tuple of "
                f"{len(x)}. For text pairs, give the adapter task='pair_classification'."
            )

    def evaluation_dataset(self, model, data, batch_size, **options):
        raise NotImplementedError

    def evaluate(self, model, data, batch_size=32, **options):
        dataset = self.evaluation_dataset(model, data, batch_size, **options)
        labels, probabilities = [], []
        for x, y in dataset:
            probabilities.append(np.asarray(model.predict_on_batch(x), dtype=np.float64))
            labels.append(np.asarray(y))
        if not labels:
            raise data_lib.DatasetError(f"{data!r} yielded no examples to evaluate.")
        return classification_report(np.concatenate(labels), np.concatenate(probabilities), model.class_names)

    def format_report(self, report):
        return format_report(report)

    def predict(self, model, columns, batch_size=32):
        texts = tuple(columns) if len(columns) > 1 else columns[0]
        results = predict_texts(model, texts, batch_size=batch_size)
        inputs = [dict(zip(self.input_fields, row)) for row in zip(*columns)]
        return [{**i, **r} for i, r in zip(inputs, results)]

    def format_prediction(self, result):
        shown = " || ".join(_short(result[f]) for f in self.input_fields)
        return f"{result['label']}\t{result['probabilities'][result['label']]:.4f}\t{shown}"

    def serving(self, model, length, router=None):
        return ClassificationServing(model, length, router)

    def route_outputs(self, heads, ids, sequence_output, pooled_output, padding_mask):
        # The heads' weights gathered per row: one small matmul, however many heads.
        return routed_probabilities(heads, ids, sequence_output, pooled_output, padding_mask)


def _short(text):
    return text if len(text) <= 70 else text[:67] + "..."
