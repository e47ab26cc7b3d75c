"""Training runs: precision, strategy, callbacks and the run folder.

`train_classifier` is what the CLI's `train` runs and what Python users can
call: it builds the model inside a `tf.distribute` strategy scope (the default
strategy on one device, so several devices are a flag), compiles it with
AdamW, linear warm-up and decay, gradient clipping and the method's learning
rate, trains with `model.fit`, keeps the best adapter by validation metric and
can resume an interrupted run (`BackupAndRestore`).
"""

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_adapters import adapter_io
from keras_adapters import composition
from keras_adapters import data as data_lib
from keras_adapters import presets
from keras_adapters import recipe
from keras_adapters import runs
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.text_classifier import AdapterTextClassifier

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


# --------------------------------------------------------------- precision
def cpu_has_fast_bfloat16():
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def default_precision():
    """The fastest numerically safe policy here (see BENCHMARKS.md).

    GPUs: `mixed_float16` (Keras adds loss scaling). CPUs with bf16 matrix
    instructions: `mixed_bfloat16` (measured 1.5x faster than float32 for
    adapter training on an AVX512-BF16 CPU, same BBC News accuracy within
    two test documents).
    Otherwise `float32`.
    """
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if cpu_has_fast_bfloat16():
        return "mixed_bfloat16"
    return "float32"


def resolve_precision(precision):
    if precision in (None, "auto"):
        return default_precision()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}.")
    return precision


# ---------------------------------------------------------------- strategy
def get_strategy(name=None):
    """`None`/`"default"`: one device; `"mirrored"`: all local GPUs (or CPU)."""
    if name in (None, "default"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    raise ValueError(f"strategy must be 'default' or 'mirrored', got {name!r}.")


# --------------------------------------------------------------- callbacks
class BestAdapterCheckpoint(keras.callbacks.Callback):
    """Save the adapter folder whenever the monitored metric improves.

    The best value so far is kept in `state_file` too, so a run resumed by
    `BackupAndRestore` does not overwrite a better adapter saved before the
    interruption.
    """

    def __init__(self, directory, monitor="val_accuracy", mode="max", state_file=None):
        super().__init__()
        self.directory = str(directory)
        self.monitor = monitor
        self.better = np.greater if mode == "max" else np.less
        self.best = -np.inf if mode == "max" else np.inf
        self.best_epoch = None
        self.state_file = state_file
        if state_file and os.path.isfile(state_file):
            state = runs.read_json(state_file)
            if state.get("monitor") == monitor:
                self.best, self.best_epoch = state["value"], state["epoch"]

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not _finite(value, logs.get("loss", 0.0)) or not self._weights_finite():
            return  # a diverged epoch never becomes the best adapter
        if self.better(value, self.best):
            self.best, self.best_epoch = float(value), epoch + 1
            self.model.save_adapter(self.directory)
            if self.state_file:
                runs.write_json(
                    self.state_file,
                    {"monitor": self.monitor, "value": self.best, "epoch": self.best_epoch},
                )


    def _weights_finite(self):
        return all(np.isfinite(w.numpy()).all() for w in self.model.trainable_weights)


def _finite(*values):
    return all(np.isfinite(float(v)) for v in values)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message says what was kept."""


def check_options(epochs, batch_size, sequence_length, validation_split, learning_rate, preset):
    """Refuse impossible numeric options before anything is loaded."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("sequence_length", sequence_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if sequence_length < 3:
        raise ValueError(f"sequence_length {sequence_length} leaves no room for text between [CLS] and [SEP]; use 3 or more.")
    limit = presets.max_sequence_length(preset)
    if limit and sequence_length > limit:
        raise ValueError(
            f"sequence_length {sequence_length} is more than the {limit} positions this backbone has; "
            f"use at most {limit} (longer texts are truncated)."
        )
    if validation_split is not None and not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}.")
    if learning_rate is not None and not (learning_rate > 0 and np.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}.")


@contextlib.contextmanager
def run_lock(output):
    """Hold `output/.lock` while training, so a second `train` on the same run
    folder is refused. An OS lock (flock): the kernel drops it when the
    holding process ends, however it ends, so a killed run never blocks the
    rerun that resumes it."""
    path = Path(output) / ".lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise RunInUse(
                f"{output} is in use by another keras-adapters train (pid {holder}). Wait for it to "
                "finish, or pass another --output."
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class RunInUse(ValueError):
    """Another process is training into the same run folder."""


class TrainingTimer(keras.callbacks.Callback):
    """Wall time of `fit`, for the end-of-training summary line."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


# ------------------------------------------------------------------- train
def training_datasets(data, preprocessor, validation_split, **kwargs):
    """(train, validation or None) from a folder or `tfds:NAME`.

    For TFDS, the validation part is the last `validation_split` of the
    training split (`train[:90%]` / `train[90%:]`); pass `split=` to change
    the base split.
    """
    if str(data).startswith("tfds:"):
        split = kwargs.pop("split", "train")
        if not validation_split:
            return data_lib.load_text_dataset(data, preprocessor, split=split, **kwargs), None
        cut = int(round(100 * (1 - validation_split)))
        train = data_lib.load_text_dataset(data, preprocessor, split=f"{split}[:{cut}%]", **kwargs)
        kwargs.update(shuffle=False, class_names=train.class_names)
        validation = data_lib.load_text_dataset(
            data, preprocessor, split=f"{split}[{cut}%:]", **kwargs
        )
        return train, validation
    if validation_split:
        return data_lib.text_dataset_from_directory(
            data, preprocessor, validation_split=validation_split, subset="both", **kwargs
        )
    return data_lib.text_dataset_from_directory(data, preprocessor, **kwargs), None


def train_classifier(
    data,
    output,
    preset="default",
    method="houlsby",
    epochs=3,
    batch_size=32,
    sequence_length=128,
    learning_rate=None,
    precision="auto",
    validation_split=0.1,
    seed=0,
    strategy=None,
    bucket_by_sequence_length=False,
    early_stopping_patience=None,
    pooling="auto",
    tensorboard=True,
    verbose=1,
    callbacks=(),
    fuse=None,
    **data_options,
):
    """Fine-tune an adapter (or an AdapterFusion) on a directory or `tfds:NAME`.

    Args:
        fuse: run folders of finished adapters (same backbone, checked): train
            an AdapterFusion over them for this task instead of a new adapter
            (`method` is then unused; the backbone is the runs').
        callbacks: extra Keras callbacks.
        **data_options: go to the dataset functions (e.g. `text_key`,
            `label_key`, `split` for TFDS).

    Writes to `output` (a run folder): `adapter/` (the best adapter, as
    `save_adapter` writes it), `class_names.json`, `train_config.json`,
    `history.json`, `metrics.json`, `logs/` (TensorBoard). While training,
    `backup/` holds the state `BackupAndRestore` resumes from after an
    interruption; it is removed when training completes. The run folder never
    holds a copy of the backbone.

    Returns:
        (model, summary dict).
    """
    check_options(epochs, batch_size, sequence_length, validation_split, learning_rate, preset)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with run_lock(output):
        precision = resolve_precision(precision)
        keras.utils.set_random_seed(seed)
        strategy = get_strategy(strategy)
        if fuse:
            preset = adapter_io.read_config(runs.adapter_dir(fuse[0]))["backbone"]["preset"]
        global_batch = batch_size * strategy.num_replicas_in_sync
        train, validation = training_datasets(
            data,
            presets.load_preprocessor(preset, sequence_length),
            validation_split,
            batch_size=global_batch,
            seed=seed,
            bucket_by_sequence_length=bucket_by_sequence_length,
            **data_options,
        )
        steps = int(np.ceil(train.num_examples / global_batch)) * epochs
        with strategy.scope():
            options = dict(sequence_length=sequence_length, dtype=precision, pooling=pooling)
            if fuse:
                model = build_fusion_model(fuse, train.class_names, **options)
            else:
                model = AdapterTextClassifier.from_preset(
                    preset, num_classes=len(train.class_names), method=get_adapter_config(method),
                    class_names=train.class_names, **options,
                )
            peak = learning_rate or model.default_learning_rate
            model.compile(
                optimizer=recipe.make_optimizer(peak, steps),
                metrics=recipe.classification_metrics(model.num_classes, model.multi_label),
            )
        monitor = "val_accuracy" if validation is not None else "accuracy"
        record = _run_record(
            model, data, fuse, train, validation, strategy,
            epochs=epochs, batch_size=batch_size, sequence_length=sequence_length, learning_rate=peak,
            precision=precision, validation_split=validation_split, seed=seed,
            bucket_by_sequence_length=bucket_by_sequence_length,
        )
        runs.write_json(output / "train_config.json", record)
        runs.write_json(output / "class_names.json", train.class_names)
        fit_callbacks, timer, best = _callbacks(output, monitor, tensorboard, early_stopping_patience, callbacks)
        history = model.fit(train, validation_data=validation, epochs=epochs, callbacks=fit_callbacks, verbose=verbose)
        return model, _finish(model, output, history, timer, best, train.num_examples, monitor)


def _run_record(model, data, fuse, train, validation, strategy, **options):
    """What `train_config.json` records about a run."""
    return {
        "data": str(data),
        "preset": model.preset,
        "method": None if fuse else model.adapter_config().get_config(),
        "fuse": [str(r) for r in fuse] if fuse else None,
        **options,
        "strategy": strategy.__class__.__name__,
        "num_replicas": strategy.num_replicas_in_sync,
        "pooling": model.pooling,
        "num_train_examples": train.num_examples,
        "num_validation_examples": None if validation is None else validation.num_examples,
    }


def build_fusion_model(run_dirs, class_names, sequence_length=128, dtype=None, pooling="auto"):
    """A model with each run's adapter (named after its folder) and a new
    AdapterFusion over them with a head for `class_names`, ready to train."""
    model, names = runs.load_runs(run_dirs, dtype=dtype, sequence_length=sequence_length)
    if model.fusion_names:
        raise ValueError("--fuse takes runs of single adapters, not fusion runs.")
    head = {} if pooling in (None, "auto") else {"pooling": pooling}
    fuse = model.add_adapter_fusion(
        composition.Fuse(*names), num_classes=len(class_names), class_names=class_names, **head
    )
    model.train_adapter_fusion(fuse)
    return model


def _callbacks(output, monitor, tensorboard, patience, extra):
    """The run's callbacks: timer, best adapter, backup (+ TensorBoard, early stop)."""
    timer = TrainingTimer()
    best_state = output / "best.json"
    if not (output / "backup").is_dir() and best_state.is_file():
        best_state.unlink()  # a new run, not a resumed one
    best = BestAdapterCheckpoint(runs.adapter_dir(output), monitor=monitor, state_file=str(best_state))
    callbacks = [
        *extra,
        timer,
        keras.callbacks.TerminateOnNaN(),
        best,
        keras.callbacks.BackupAndRestore(str(output / "backup"), delete_checkpoint=True),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(output / "logs"), update_freq="epoch"))
    if patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience))
    return callbacks, timer, best


def _finish(model, output, history, timer, best, num_examples, monitor):
    """Save what the run produced; the summary that `metrics.json` holds.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (nothing non-finite
            is saved; an adapter saved at an earlier epoch is kept).
    """
    losses = history.history.get("loss", [])
    diverged = not _finite(*losses)
    if best.best_epoch is None and not diverged:  # e.g. the monitor never appeared
        model.save_adapter(runs.adapter_dir(output))
    runs.write_json(output / "history.json", _jsonable(history.history))
    epochs_run = len(losses)
    seconds = timer.seconds
    summary = {
        "seconds": round(seconds, 2),
        "epochs_run": epochs_run,
        "examples_per_second": round(num_examples * epochs_run / seconds, 2) if seconds else None,
        "best_metric": monitor,
        "best_value": None if best.best_epoch is None else best.best,
        "best_epoch": best.best_epoch,
    }
    summary["diverged"] = diverged
    runs.write_json(output / "metrics.json", {"train": summary})
    if os.path.isdir(output / "backup"):
        shutil.rmtree(output / "backup")
    if diverged:
        kept = (
            f"the adapter of epoch {best.best_epoch} is kept in {runs.adapter_dir(output)}"
            if best.best_epoch
            else "no adapter was saved"
        )
        raise TrainingDiverged(
            f"Training diverged: the loss became {losses[-1]} in epoch {epochs_run}; {kept}. "
            "Lower --learning-rate (the method's default is a good start) and train again."
        )
    return summary


def _jsonable(history):
    return {k: [float(v) for v in values] for k, values in history.items()}
