"""`fit` under differential privacy: `model.compile(privacy=ka.DPConfig(...))`."""

import keras
import tensorflow as tf

from keras_adapters import tasks
from keras_adapters.core import composition
from keras_adapters.core import dp_sgd
from keras_adapters.core import precision as precision_lib
from keras_adapters.core import privacy as privacy_lib


class PrivacyAccountant(keras.callbacks.Callback):
    """Epsilon spent so far in every epoch's logs (`epsilon`, so in the
    history too), the guarantee kept with the trained adapter, and the run
    stopped at the last step within the budget."""

    def __init__(self, plan, name, unit):
        super().__init__()
        self.plan, self.name, self.unit = plan, name, unit

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.plan.max_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        report = self._report()
        if logs is not None:
            logs["epsilon"] = report["epsilon"]

    def on_train_end(self, logs=None):
        self._report()  # a resumed run that had no epoch left to run counts its restored steps too

    def _report(self):
        # The optimizer's steps: a resumed run restores them with its weights.
        report = self.plan.report(int(self.model.optimizer.iterations.numpy()), self.unit)
        self.model.set_privacy_report(self.name, report)
        return report


class PrivateTrainingMixin:
    """DP-SGD for `AdapterModel` (`keras_adapters.core.dp_sgd`): compile with
    `privacy=`, then `fit` draws Poisson-sampled batches, clips each example's
    gradient and adds noise; `privacy_report()` is the guarantee."""

    privacy = None
    dp_state = None

    def privacy_report(self, name=None):
        """The (epsilon, delta) guarantee of an adapter trained privately
        (`None`: trained without privacy), as its folder records it."""
        return dict((getattr(self, "_privacy_reports", None) or {}).get(name or self._trained_name()) or {}) or None

    def set_privacy_report(self, name, report):
        if getattr(self, "_privacy_reports", None) is None:
            self._privacy_reports = {}
        if report is None:
            self._privacy_reports.pop(name, None)
        else:
            self._privacy_reports[name] = dict(report)

    def _trained_name(self):
        active = self.active_adapters
        return active.name if isinstance(active, composition.Fuse) else self._single_name()

    def _set_privacy(self, privacy, optimizer):
        """`compile`'s part: check `privacy` against the model and optimizer."""
        if isinstance(privacy, dict):
            privacy = privacy_lib.DPConfig.from_config(privacy)
        if privacy is not None and not isinstance(privacy, privacy_lib.DPConfig):
            raise TypeError(f"privacy must be a ka.DPConfig (or its config dict), got {type(privacy).__name__}.")
        if privacy is not None:
            _check_private_optimizer(self, optimizer)
            if self.distribute_strategy.num_replicas_in_sync > 1:
                raise ValueError(
                    "Private training runs on one device for now (the noise must be added once, not once "
                    "per replica); train without a distribution strategy."
                )
        self.privacy = privacy
        self.dp_state = None

    def _check_privacy_compiled(self):
        """After `keras.Model.compile`: Keras wraps a `mixed_float16` model's
        optimizer in loss scaling by itself."""
        if self.privacy is not None:
            _check_private_optimizer(self, self.optimizer)

    def train_step(self, data):
        if self.dp_state is not None:
            return dp_sgd.train_step(self, data)
        if self.privacy is not None:
            raise ValueError(
                "A model compiled with privacy= trains through fit(), which draws the Poisson-sampled "
                "batches the accountant counts; train_on_batch and custom loops would train without "
                "privacy. Compile without privacy to train that way."
            )
        return super().train_step(data)

    def train_on_batch(self, *args, **kwargs):
        if self.privacy is None and self.dp_state is None:
            self.set_privacy_report(self._trained_name(), None)  # what it said no longer holds
        return super().train_on_batch(*args, **kwargs)

    def _check_fresh_privacy(self):
        """One private fit per adapter and optimizer: the accountant counts the
        optimizer's steps from 0, for one plan."""
        name = self._trained_name()
        spent = self.privacy_report(name)
        if spent:
            raise ValueError(
                f"Adapter {name!r} was already trained privately ({spent['steps']} steps, "
                f"epsilon {spent['epsilon']:.3g}); a second private fit would need both "
                "budgets composed, which this release does not do. Train a new adapter (add_adapter) instead."
            )
        if int(self.optimizer.iterations.numpy()) != 0 or self._steps_per_execution_above_one():
            raise ValueError(
                "Private training counts the optimizer's steps from 0, one per batch: compile again "
                "(a new optimizer) with privacy=..., and without steps_per_execution."
            )

    def _steps_per_execution_above_one(self):
        return int(getattr(self, "steps_per_execution", 1) or 1) > 1

    def _fit_privately(self, x, y, batch_size, sample_weight, validation_split, fit, **kwargs):
        """`fit` on Poisson-sampled batches drawn from all of `x` (expected
        size `batch_size`, or a dataset's own batch size)."""
        if validation_split:
            raise ValueError(
                "validation_split holds out examples of the private data, and choosing by them spends "
                "privacy no accountant counts; pass validation_data you may use freely, or none."
            )
        if isinstance(x, tf.data.Dataset):
            batch_size = batch_size or _batch_size(x)
            dataset = x
        else:
            batch_size = batch_size or 32
            packed = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
            dataset = tf.data.Dataset.from_tensor_slices(packed).batch(256)
        self._check_fresh_privacy()
        dataset = dataset.map(lambda *e: self.preprocess_samples(*e))
        examples = dp_sgd.examples_in_memory(dataset)
        count = len(tf.nest.flatten(examples)[0])
        epochs = kwargs.pop("epochs", 1)
        plan = self.privacy.plan(count, batch_size, epochs)
        task = tasks.get_task(self.task)
        dp_sgd.prepare(self, plan, examples, task)
        name = self._trained_name()
        self.set_privacy_report(name, plan.report(0, task.privacy_unit))
        self.train_function = None  # traced again, through dp_sgd.train_step
        callbacks = [PrivacyAccountant(plan, name, task.privacy_unit), *(kwargs.pop("callbacks", None) or [])]
        batches = dp_sgd.poisson_batches(examples, plan.sampling_rate, plan.steps_per_epoch)
        try:
            return fit(batches, epochs=epochs, callbacks=callbacks, **{**kwargs, "shuffle": False})
        finally:
            self.dp_state = None
            self.train_function = None


def _check_private_optimizer(model, optimizer):
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) or (
        precision_lib.backbone_precision(model.backbone) in ("autocast_float16", "mixed_float16")
    ):
        raise ValueError(
            "Private training clips each example's own gradient, which float16 loss scaling distorts "
            "(and a skipped step would depend on the private data); train in float32 or bfloat16 "
            "(precision float32 / mixed_bfloat16 / autocast_bfloat16)."
        )


def _batch_size(dataset):
    """A batched dataset's batch size (its first batch's)."""
    first = next(iter(dataset.take(1)), None)
    if first is None:
        raise ValueError("The training dataset holds no batch.")
    return int(tf.shape(tf.nest.flatten(first)[0])[0])
