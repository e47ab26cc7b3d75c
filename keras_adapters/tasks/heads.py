"""Task heads: what turns the backbone's outputs into a task's predictions.

Every named adapter (and every fusion) owns one head, so one backbone can
carry several tasks, each with its own classes.
"""

import numbers

import keras
from keras import ops

from keras_adapters import tasks
from keras_adapters.methods.base import gather_rows
from keras_adapters.methods.base import pad_axis

POOLINGS = ("cls", "mean")


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


MULTI_LABEL_REMOVED = (
    "multi_label heads were removed in keras-adapters 0.4: evaluate, predict and serving "
    "answered them with argmax, and no data format carried several labels per text. Train "
    "one two-class adapter per label instead."
)


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


def _dropout_and_logits(head, num_classes, dropout):
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
        pooling: `"cls"` (the backbone's pooled `[CLS]` output) or `"mean"`
            (mean of the token vectors where the padding mask is true).
        dropout: dropout before the classification layer.
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
        task=tasks.TEXT_CLASSIFICATION,
        **kwargs,
    ):
        if kwargs.pop("multi_label", False):
            raise ValueError(MULTI_LABEL_REMOVED)
        super().__init__(**kwargs)
        task = tasks.canonical_task(task)
        if task not in tasks.CLASSIFICATION_TASKS:
            raise ValueError(f"A ClassificationHead classifies texts or text pairs, not {task!r}.")
        self.task = task
        self.class_names = check_classes(num_classes, class_names)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        if sequence_length is not None and (
            isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 3
        ):
            raise ValueError(f"sequence_length must be an integer >= 3 or None, got {sequence_length!r}.")
        self.sequence_length = sequence_length
        self.num_classes = int(num_classes)
        self.pooling = pooling
        self.dropout_rate = dropout
        self.mean_pooling = MaskedMeanPooling(dtype=self.dtype_policy, name="mean_pooling")
        self.dropout, self.logits = _dropout_and_logits(self, num_classes, dropout)

    def build(self, hidden_dim):
        self.logits.build((None, int(hidden_dim)))
        self.built = True

    def call(self, sequence_output, pooled_output, padding_mask, training=None):
        if self.pooling == "cls":
            pooled = pooled_output
        else:
            pooled = self.mean_pooling(sequence_output, padding_mask)
        logits = self.logits(self.dropout(pooled, training=training))
        logits = ops.cast(logits, "float32")
        return ops.softmax(logits, axis=-1)

    def weights_by_key(self):
        """{key: variable}, keyed as adapter folders are (`logits/kernel`)."""
        return {f"logits/{w.name}": w for w in self.logits.weights}

    def task_config(self):
        return {
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "pooling": self.pooling,
            "dropout": self.dropout_rate,
            "sequence_length": self.sequence_length,
            "task": self.task,
        }

    @property
    def text_inputs(self):
        """Texts per example: 1, or 2 for pairs."""
        return 2 if self.task == tasks.PAIR_CLASSIFICATION else 1

    def label_names(self):
        return self.class_names or [str(i) for i in range(self.num_classes)]

    def compute_output_shape(self, sequence_shape, pooled_shape, mask_shape):
        return (sequence_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(self.task_config())
        return config


@keras.saving.register_keras_serializable(package="keras_adapters")
class TokenClassificationHead(keras.layers.Layer):
    """Dropout and a dense layer from each token's vector to tag probabilities.

    Args:
        num_classes: number of tags (2 or more).
        dropout: dropout before the dense layer.
        class_names: optional `num_classes` distinct tag names (`O`, `B-PER`, ...).
        sequence_length: the tokens per text this task was trained with.
        task: `"token_classification"`.
        pooling: unused by this head; kept (and saved) as the pooling that
            classification adapters added to the same model start from.

    Probabilities are float32 `[batch, length, num_classes]`.

    Example:
    ```python
    head = TokenClassificationHead(5, class_names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    head.build(hidden_dim=384)
    probabilities = head(sequence_output, pooled_output, padding_mask)
    ```
    """

    text_inputs = 1

    def __init__(self, num_classes, dropout=0.1, class_names=None, sequence_length=None,
                 task=tasks.TOKEN_CLASSIFICATION, pooling=None, **kwargs):
        super().__init__(**kwargs)
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} or None, got {pooling!r}.")
        self.pooling = pooling
        if tasks.canonical_task(task) != tasks.TOKEN_CLASSIFICATION:
            raise ValueError(f"A TokenClassificationHead tags tokens, not {task!r}.")
        self.task = tasks.TOKEN_CLASSIFICATION
        self.class_names = check_classes(num_classes, class_names)
        self.num_classes = int(num_classes)
        self.sequence_length = sequence_length
        self.dropout_rate = dropout
        self.dropout, self.logits = _dropout_and_logits(self, num_classes, dropout)

    def build(self, hidden_dim):
        self.logits.build((None, None, int(hidden_dim)))
        self.built = True

    def call(self, sequence_output, pooled_output, padding_mask, training=None):
        logits = self.logits(self.dropout(sequence_output, training=training))
        return ops.softmax(ops.cast(logits, "float32"), axis=-1)

    weights_by_key = ClassificationHead.weights_by_key
    label_names = ClassificationHead.label_names
    task_config = ClassificationHead.task_config

    def compute_output_shape(self, sequence_shape, pooled_shape, mask_shape):
        return (*sequence_shape[:2], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(self.task_config())
        return config


@keras.saving.register_keras_serializable(package="keras_adapters")
class QuestionAnsweringHead(keras.layers.Layer):
    """Answer start and end probabilities over each window's tokens.

    Args:
        dropout: dropout before the dense layer.
        sequence_length: the tokens per window this task was trained with.
        stride: tokens neighbouring windows of a long context share
            (`qa_data.QuestionWindows`; `None`: its default); recorded so
            prediction and serving cut contexts as training did.
        max_answer_length: the longest answer, in tokens, predictions pick.
        max_question_length: question tokens kept (`None`: the default).
        num_classes, class_names: always 2, `["start", "end"]` (the two
            distributions); accepted so task records read like the others.
        task: `"question_answering"`.
        pooling: unused by this head (see `TokenClassificationHead`).

    Probabilities are float32 `[batch, 2, length]`: row 0 the start, row 1
    the end, each a softmax over the tokens the padding mask keeps, so the
    labels `[batch, 2]` (start and end token) train it with plain sparse
    cross-entropy.

    Example:
    ```python
    head = QuestionAnsweringHead(stride=96)
    head.build(hidden_dim=384)
    probabilities = head(sequence_output, pooled_output, padding_mask)
    ```
    """

    text_inputs = 2
    NAMES = ["start", "end"]

    def __init__(self, dropout=0.1, sequence_length=None, stride=None, max_answer_length=30,
                 max_question_length=None, num_classes=2, class_names=None,
                 task=tasks.QUESTION_ANSWERING, pooling=None, **kwargs):
        super().__init__(**kwargs)
        if tasks.canonical_task(task) != tasks.QUESTION_ANSWERING:
            raise ValueError(f"A QuestionAnsweringHead answers questions, not {task!r}.")
        if num_classes != 2 or class_names not in (None, self.NAMES):
            raise ValueError(f"A question-answering head has the 2 outputs {self.NAMES}, got {num_classes!r}.")
        for key, value, least in (("stride", stride, 0), ("max_answer_length", max_answer_length, 1),
                                  ("max_question_length", max_question_length, 1)):
            if value is None and key != "max_answer_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{key} must be an integer >= {least}, got {value!r}.")
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} or None, got {pooling!r}.")
        self.task, self.pooling = tasks.QUESTION_ANSWERING, pooling
        self.num_classes, self.class_names = 2, list(self.NAMES)
        self.sequence_length, self.dropout_rate = sequence_length, dropout
        self.stride, self.max_answer_length, self.max_question_length = stride, max_answer_length, max_question_length
        self.dropout, self.logits = _dropout_and_logits(self, 2, dropout)

    def build(self, hidden_dim):
        self.logits.build((None, None, int(hidden_dim)))
        self.built = True

    def call(self, sequence_output, pooled_output, padding_mask, training=None):
        logits = ops.cast(self.logits(self.dropout(sequence_output, training=training)), "float32")
        logits = ops.where(ops.expand_dims(padding_mask, -1), logits, -1e9)
        return ops.softmax(ops.transpose(logits, (0, 2, 1)), axis=-1)

    weights_by_key = ClassificationHead.weights_by_key
    label_names = ClassificationHead.label_names

    def task_config(self):
        return {
            **ClassificationHead.task_config(self),
            "stride": self.stride,
            "max_answer_length": self.max_answer_length,
            "max_question_length": self.max_question_length,
        }

    def compute_output_shape(self, sequence_shape, pooled_shape, mask_shape):
        return (sequence_shape[0], 2, sequence_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(self.task_config())
        return config


#: Head settings only a question-answering head has (kept in adapter folders).
QA_SETTINGS = ("stride", "max_answer_length", "max_question_length")


def make_head(config, **layer_kwargs):
    """The head a task record (`task_config()`, an adapter folder's `task`) describes."""
    config = dict(config)
    task = tasks.canonical_task(config.get("task") or tasks.TEXT_CLASSIFICATION)
    if task == tasks.QUESTION_ANSWERING:
        config["num_classes"] = 2 if config.get("num_classes") is None else config["num_classes"]
        return QuestionAnsweringHead(**config, **layer_kwargs)
    if task == tasks.TOKEN_CLASSIFICATION:
        return TokenClassificationHead(**config, **layer_kwargs)
    return ClassificationHead(**config, **layer_kwargs)


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
