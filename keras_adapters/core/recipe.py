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


def classification_metrics(num_classes):
    """Accuracy and macro-F1."""
    return [
        keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
        SparseMacroF1(num_classes),
    ]
