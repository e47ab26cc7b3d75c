"""The compile recipe: AdamW with warm-up and decay, clipping, metrics.

Below the model: `AdapterTextClassifier.compile()` and `train_classifier`
both take their defaults from here, so there is one definition.
"""

import keras
import tensorflow as tf

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


@keras.saving.register_keras_serializable(package="keras_adapters")
class PredictedClasses(keras.metrics.Metric):
    """How many classes the model predicted (argmax) at least once.

    1 means the model has collapsed to one class (a tagger answering `O`
    everywhere): the symptom `runs.training.CollapseWarning` reports. Only
    positions whose label is not `ignore_class` count (a tagger's unlabelled
    word pieces).

    Example:
    ```python
    model.compile(metrics=[PredictedClasses(3)])  # logs `predicted_classes`
    ```
    """

    def __init__(self, num_classes, ignore_class=None, name="predicted_classes", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_class = ignore_class
        self.seen = self.add_variable(shape=(self.num_classes,), initializer="zeros", name="seen")

    def update_state(self, y_true, y_pred, sample_weight=None):
        predicted = tf.reshape(tf.argmax(y_pred, axis=-1, output_type=tf.int32), [-1])
        counted = tf.ones_like(predicted, tf.float32)
        if self.ignore_class is not None:
            counted = tf.cast(tf.not_equal(tf.reshape(tf.cast(y_true, tf.int32), [-1]), self.ignore_class), tf.float32)
        counts = tf.reduce_sum(tf.one_hot(predicted, self.num_classes) * counted[:, None], axis=0)
        self.seen.assign(tf.maximum(self.seen, tf.cast(counts > 0, self.seen.dtype)))

    def result(self):
        # `> 0`: replicas' flags may be summed.
        return tf.reduce_sum(tf.cast(self.seen > 0, self.dtype))

    def reset_state(self):
        self.seen.assign(tf.zeros_like(self.seen))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_class": self.ignore_class}


def classification_metrics(num_classes):
    """Accuracy, macro-F1 and the number of classes predicted."""
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        SparseMacroF1(num_classes),
        PredictedClasses(num_classes),
    ]
