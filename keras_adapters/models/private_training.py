"""`fit` under differential privacy: `model.compile(privacy=ka.DPConfig(...))`."""

import contextlib

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
    stopped at the last step within the budget.

    The fit's steps are the optimizer's since `start` (its count when the fit
    began): a resumed run restores them with its weights, so they are counted
    too."""

    def __init__(self, plan, name, unit, start=0):
        super().__init__()
        self.plan, self.name, self.unit, self.start = plan, name, unit, start

    def on_train_batch_end(self, batch, logs=None):
        if self._steps() >= self.plan.max_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        report = self.record()
        if logs is not None:
            logs["epsilon"] = report["epsilon"]

    def on_train_end(self, logs=None):
        self.record()  # a resumed run that had no epoch left to run counts its restored steps too

    def record(self):
        """The guarantee after the steps taken so far, kept with the adapter."""
        report = self.plan.report(self._steps(), self.unit)
        self.model.set_privacy_report(self.name, report)
        return report

    def _steps(self):
        # Never below 0: Keras' BackupAndRestore retried in the same process
        # can restore fewer steps than the optimizer had when this fit began.
        return max(0, int(self.model.optimizer.iterations.numpy()) - self.start)


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
        """Record adapter `name`'s guarantee; `None`: it no longer holds (the
        adapter trained on without privacy). Its private fits are kept
        either way: a later private fit composes with them."""
        if getattr(self, "_privacy_reports", None) is None:
            self._privacy_reports, self._private_fits = {}, {}
        if report is None:
            self._privacy_reports.pop(name, None)
        else:
            self._privacy_reports[name] = dict(report)
            self._private_fits[name] = privacy_lib.fits_of(report)

    def forget_privacy(self, name):
        """Adapter `name` is gone or new: nothing of an earlier one's private fits applies to it."""
        for kept in (getattr(self, "_privacy_reports", None), getattr(self, "_private_fits", None)):
            if kept is not None:
                kept.pop(name, None)

    def _previous_fits(self, name):
        return (getattr(self, "_private_fits", None) or {}).get(name, ())

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

    def _check_one_step_per_batch(self):
        """The accountant counts the optimizer's steps, one per Poisson batch."""
        if int(getattr(self, "steps_per_execution", 1) or 1) > 1:
            raise ValueError(
                "Private training counts the optimizer's steps, one per batch: compile again with "
                "privacy=... and without steps_per_execution."
            )

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
        self._check_one_step_per_batch()
        dataset = dataset.map(lambda *e: self.preprocess_samples(*e))
        examples = dp_sgd.examples_in_memory(dataset)
        count = len(tf.nest.flatten(examples)[0])
        epochs = kwargs.pop("epochs", 1)
        name = self._trained_name()
        # An adapter trained privately before: this fit spends what its budget has left.
        plan = self.privacy.plan(count, batch_size, epochs, self._previous_fits(name))
        task = tasks.get_task(self.task)
        dp_sgd.prepare(self, plan, examples, task)
        # A dataset read one row per question (`privacy_unit`) protects whole questions.
        unit = getattr(x, "privacy_unit", None) or task.privacy_unit
        self.set_privacy_report(name, plan.report(0, unit))
        self.train_function = None  # traced again, through dp_sgd.train_step
        start = int(self.optimizer.iterations.numpy())
        accountant = PrivacyAccountant(plan, name, unit, start)
        accountant.set_model(self)  # for `record` below, whether or not fit got as far as the callbacks
        callbacks = [accountant, *(kwargs.pop("callbacks", None) or [])]
        batches = dp_sgd.poisson_batches(examples, plan.sampling_rate, plan.steps_per_epoch)
        try:
            return fit(batches, epochs=epochs, callbacks=callbacks, **{**kwargs, "shuffle": False})
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped the fit is the one to see
                accountant.record()  # the steps it took are spent
            raise
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
