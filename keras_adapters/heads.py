"""Task heads: what turns the backbone's outputs into a task's predictions.

Every named adapter (and every fusion) owns one head, so one backbone can
carry several tasks, each with its own classes.
"""

import keras
from keras import ops

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


def check_classes(num_classes, class_names, multi_label):
    """`class_names` as a list of distinct strings, or `None`; raises on bad input."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if not multi_label and num_classes < 2:
        raise ValueError(
            "A single-label classifier needs num_classes >= 2 "
            f"(got {num_classes}); use multi_label=True for one binary label."
        )
    if class_names is None:
        return None
    class_names = [str(c) for c in class_names]
    if len(class_names) != num_classes or len(set(class_names)) != num_classes:
        raise ValueError(f"class_names must be {num_classes} distinct names, got {class_names}.")
    return class_names


@keras.saving.register_keras_serializable(package="keras_adapters")
class ClassificationHead(keras.layers.Layer):
    """Pooling, dropout and a dense layer to class probabilities.

    Args:
        num_classes: number of classes (labels, for multi-label).
        pooling: `"cls"` (the backbone's pooled `[CLS]` output) or `"mean"`
            (mean of the token vectors where the padding mask is true).
        dropout: dropout before the classification layer.
        multi_label: sigmoid outputs (multi-hot labels) instead of softmax.
        class_names: optional `num_classes` distinct names.

    Probabilities are float32 whatever the dtype policy, for a stable loss.

    Example:
    ```python
    head = ClassificationHead(3, pooling="mean")
    head.build(hidden_dim=384)
    probabilities = head(sequence_output, pooled_output, padding_mask)
    ```
    """

    def __init__(
        self, num_classes, pooling="cls", dropout=0.1, multi_label=False, class_names=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.class_names = check_classes(num_classes, class_names, multi_label)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        self.num_classes = num_classes
        self.pooling = pooling
        self.dropout_rate = dropout
        self.multi_label = multi_label
        self.mean_pooling = MaskedMeanPooling(dtype=self.dtype_policy, name="mean_pooling")
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="classifier_dropout")
        self.logits = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=self.dtype_policy,
            name="logits",
        )

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
        return ops.sigmoid(logits) if self.multi_label else ops.softmax(logits, axis=-1)

    def weights_by_key(self):
        """{key: variable}, keyed as adapter folders are (`logits/kernel`)."""
        return {f"logits/{w.name}": w for w in self.logits.weights}

    def task_config(self):
        return {
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "multi_label": self.multi_label,
            "pooling": self.pooling,
            "dropout": self.dropout_rate,
        }

    def label_names(self):
        return self.class_names or [str(i) for i in range(self.num_classes)]

    def compute_output_shape(self, sequence_shape, pooled_shape, mask_shape):
        return (sequence_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(self.task_config())
        return config
