"""The compile recipe: AdamW with warm-up and decay, clipping, metrics.

Below the model: `AdapterTextClassifier.compile()` and `train_classifier`
both take their defaults from here, so there is one definition.
"""

import keras
import tensorflow as tf

from keras_adapters import tasks

#: The label of token positions that no loss or metric counts (see `token_data`).
IGNORE = -1


# --------------------------------------------------------------- optimizer
@keras.saving.register_keras_serializable(package="keras_adapters")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `peak` over `warmup_steps`, then linear decay
    to `end_fraction * peak` at `total_steps` (BERT's schedule).

    Example:
    ```python
    schedule = WarmupLinearDecay(1e-3, total_steps=1000, warmup_steps=100)
    ```
    """

    def __init__(self, peak, total_steps, warmup_steps, end_fraction=0.0):
        self.peak = float(peak)
        self.total_steps = int(max(1, total_steps))
        self.warmup_steps = int(max(0, min(warmup_steps, self.total_steps)))
        self.end_fraction = float(end_fraction)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = tf.cast(max(1, self.warmup_steps), tf.float32)
        total = tf.cast(self.total_steps, tf.float32)
        rising = self.peak * (step + 1.0) / warmup
        span = tf.maximum(total - warmup, 1.0)
        progress = tf.clip_by_value((step - warmup) / span, 0.0, 1.0)
        falling = self.peak * (1.0 - (1.0 - self.end_fraction) * progress)
        return tf.where(step < warmup, rising, falling) if self.warmup_steps else falling

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "end_fraction": self.end_fraction,
        }


def make_optimizer(
    learning_rate, total_steps=None, warmup_fraction=0.1, weight_decay=0.01, clipnorm=1.0
):
    """AdamW + global-norm clipping, no weight decay on biases/norms; with
    `total_steps`, the learning rate warms up and decays (`WarmupLinearDecay`),
    otherwise it stays constant."""
    if total_steps is not None:
        learning_rate = WarmupLinearDecay(
            learning_rate, total_steps, warmup_steps=int(warmup_fraction * total_steps)
        )
    optimizer = keras.optimizers.AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, global_clipnorm=clipnorm
    )
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


# ----------------------------------------------------------------- metrics
@keras.saving.register_keras_serializable(package="keras_adapters")
class SparseMacroF1(keras.metrics.F1Score):
    """Macro-averaged F1 for integer labels and class probabilities."""

    def __init__(self, num_classes, name="macro_f1", **kwargs):
        kwargs.pop("average", None)
        kwargs.pop("threshold", None)
        super().__init__(average="macro", threshold=None, name=name, **kwargs)
        self.num_classes = num_classes

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.one_hot(tf.cast(tf.reshape(y_true, [-1]), tf.int32), self.num_classes)
        return super().update_state(y_true, y_pred, sample_weight)

    def get_config(self):
        config = super().get_config()
        config["num_classes"] = self.num_classes
        return config


def classification_metrics(num_classes):
    """Accuracy and macro-F1."""
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        SparseMacroF1(num_classes),
    ]


@keras.saving.register_keras_serializable(package="keras_adapters")
class MaskedAccuracy(keras.metrics.Mean):
    """Accuracy over the positions whose label is not `ignore`: for token
    tagging, the first piece of each word (padding and later pieces are -1)."""

    def __init__(self, ignore=IGNORE, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore = ignore

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        hit = tf.equal(y_true, tf.cast(tf.argmax(y_pred, axis=-1), tf.int32))
        return super().update_state(tf.boolean_mask(tf.cast(hit, self.dtype), tf.not_equal(y_true, self.ignore)))

    def get_config(self):
        return {**super().get_config(), "ignore": self.ignore}


@keras.saving.register_keras_serializable(package="keras_adapters")
class TagF1(keras.metrics.Metric):
    """Micro F1 of the tags other than `outside` (`O`) over labelled tokens.

    What a tagger is picked by during training: token accuracy stays at the
    share of `O` while a model tags nothing, while this rises with every
    entity word found. (Entity-level F1 needs whole sentences:
    `evaluation.token_report`.)
    """

    def __init__(self, outside=0, ignore=IGNORE, name="tag_f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.outside, self.ignore = outside, ignore
        self.counts = self.add_variable(shape=(3,), initializer="zeros", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        predicted = tf.cast(tf.argmax(y_pred, axis=-1), tf.int32)
        labelled = tf.not_equal(y_true, self.ignore)
        true_tag = labelled & tf.not_equal(y_true, self.outside)
        predicted_tag = labelled & tf.not_equal(predicted, self.outside)
        hits = true_tag & tf.equal(y_true, predicted)
        counts = [tf.reduce_sum(tf.cast(m, self.dtype)) for m in (hits, predicted_tag, true_tag)]
        self.counts.assign_add(tf.stack(counts))

    def result(self):
        hits, predicted, true = self.counts[0], self.counts[1], self.counts[2]
        return tf.math.divide_no_nan(2.0 * hits, predicted + true)

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))

    def get_config(self):
        return {**super().get_config(), "outside": self.outside, "ignore": self.ignore}


def task_loss(task):
    """The loss for a head's task: cross-entropy, over labelled tokens only for
    tagging; for question answering, the mean of the start's and the end's."""
    if task == tasks.TOKEN_CLASSIFICATION:
        return keras.losses.SparseCategoricalCrossentropy(ignore_class=IGNORE)
    return keras.losses.SparseCategoricalCrossentropy()


def task_metrics(task, num_classes, class_names=None):
    """Accuracy and macro-F1 for classification; labelled-token accuracy and
    `TagF1` for tagging (entity F1 needs whole sentences: `evaluation.token_report`)."""
    if task == tasks.QUESTION_ANSWERING:  # of the start and end tokens, each counted
        return [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
    if task == tasks.TOKEN_CLASSIFICATION:
        outside = list(class_names).index("O") if class_names and "O" in class_names else 0
        return [MaskedAccuracy(), TagF1(outside=outside)]
    return classification_metrics(num_classes)


def monitored_metric(task):
    """The metric the best epoch is picked by (higher is better)."""
    return "tag_f1" if task == tasks.TOKEN_CLASSIFICATION else "accuracy"
