"""Training runs: precision, strategy, callbacks and the run folder.

`train_classifier` is what the CLI's `train` runs and what Python users can
call: it builds the model inside a `tf.distribute` strategy scope (the default
strategy on one device, so several devices are a flag), compiles it with
AdamW, linear warm-up and decay, gradient clipping and the method's learning
rate, trains with `model.fit`, keeps the best adapter by validation metric and
can resume an interrupted or killed run (`RunBackup`).
"""

import contextlib
import fcntl
import io
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import keras
import numpy as np
from keras.src.saving import saving_lib

from keras_adapters.io import adapter_folder as adapter_io
from keras_adapters.core import composition
from keras_adapters.io import text_data as data_lib
from keras_adapters.runs import distribute
from keras_adapters.core import precision as precision_lib
from keras_adapters.core import prefix_cache
from keras_adapters.core import privacy as privacy_lib
from keras_adapters.io import presets
from keras_adapters.core import recipe
from keras_adapters.runs import folder as runs
from keras_adapters import tasks
from keras_adapters.methods.registry import get_adapter_config

BACKUP_DIR = "backup"
#: What a run folder holds from training (removed by `overwrite=True`).
RUN_FILES = (
    "adapter", BACKUP_DIR, "train_config.json", "class_names.json", runs.EXAMPLES, "history.json", "metrics.json", "logs"
)


# --------------------------------------------------------------- callbacks
class BestAdapterCheckpoint(keras.callbacks.Callback):
    """Save the adapter folder whenever the monitored metric improves
    (`monitor=None`: after every epoch, so the last one is kept).

    An epoch that ties the best value wins when its loss is lower (the
    validation loss when the monitor is a validation metric): a small
    validation set saturates accuracy or F1 early (a tagger's held-out
    sentences without one entity type scored F1 1.0 from an epoch that never
    predicted that type), and the loss still tells the epochs apart.

    A resumed run starts from the best value recorded in its backup
    (`restore`), so it never overwrites a better adapter saved before the
    interruption. An epoch with a non-finite loss or weights is never the
    best.
    """

    def __init__(self, directory, monitor="val_accuracy", mode="max"):
        super().__init__()
        self.directory = str(directory)
        self.monitor = monitor
        self.better = np.greater if mode == "max" else np.less
        self.best = -np.inf if mode == "max" else np.inf
        self.best_loss = np.inf
        self.best_epoch = None

    def state(self):
        return {"monitor": self.monitor, "value": self.best, "loss": self.best_loss, "epoch": self.best_epoch}

    def restore(self, state):
        if state and state.get("monitor") == self.monitor and state.get("epoch"):
            self.best, self.best_epoch = state["value"], state["epoch"]
            loss = state.get("loss")  # None: no loss logged, or a backup from before 0.35
            self.best_loss = np.inf if loss is None else loss

    def _tie_loss(self, logs):
        key = "val_loss" if self.monitor.startswith("val_") else "loss"
        return float(logs.get(key, np.inf))

    def _improves(self, value, logs):
        if self.better(value, self.best):
            return True
        return value == self.best and self._tie_loss(logs) < self.best_loss

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor) if self.monitor else logs.get("loss", np.nan)
        if value is None or not _finite(value, logs.get("loss", 0.0)) or not self._weights_finite():
            return  # a diverged epoch never becomes the best adapter
        if self.monitor is None:  # chosen by nothing that depends on the data
            with _disk_errors(f"the adapter of epoch {epoch + 1} in {self.directory}", epoch):
                self.model.save_adapter(self.directory)
            self.best_epoch = epoch + 1
        elif self._improves(value, logs):
            with _disk_errors(f"the best adapter of epoch {epoch + 1} in {self.directory}", epoch):
                self.model.save_adapter(self.directory)
            self.best, self.best_loss, self.best_epoch = float(value), self._tie_loss(logs), epoch + 1

    def _weights_finite(self):
        return all(np.isfinite(w.numpy()).all() for w in self.model.trainable_weights)


class RunBackup(keras.callbacks.Callback):
    """After each epoch, the whole training state in `directory/epoch-N/`.

    Weights (with the optimizer's state), the history of every epoch so far,
    the best-adapter record and a copy of the best adapter are written into
    a hidden folder that is renamed into place when complete, so a process
    killed at any moment leaves the previous epoch's state intact, and a
    resumed run's `adapter/` is the one its record describes. `fit` resumes from the newest
    complete state (Keras' `BackupAndRestore` writes its two files one after
    the other, so a kill in between resumes from a mismatched pair, and a
    half-written file stops every rerun).

    `history` holds every epoch of the run, those before a restart included.
    """

    WEIGHTS = "state.weights.h5"
    STATE = "state.json"
    BEST = "best_adapter"

    def __init__(self, directory, best=None, on_epoch=None):
        super().__init__()
        self.directory = Path(directory)
        self.best = best
        self.on_epoch = on_epoch
        self.history = {}
        self.keep = 1

    def on_train_begin(self, logs=None):
        saved = self._agreed_state()
        if saved is None:
            return
        try:
            if self.model.optimizer is not None and not self.model.optimizer.built:
                self.model.optimizer.build(self.model.trainable_variables)
            self.model.load_weights(str(saved / self.WEIGHTS))
            state = runs.read_json(saved / self.STATE)
            epoch, history = int(state["epoch"]), dict(state["history"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackupUnreadable(
                f"The training state in {saved} cannot be read ({type(e).__name__}: {e}). Delete "
                f"{self.directory} to start the run over; {self.best.directory if self.best else 'adapter/'} "
                "keeps the best adapter saved so far."
            ) from None
        self.history = {k: list(v)[:epoch] for k, v in history.items()}
        if self.best is not None:
            self.best.restore(state.get("best"))
            kept = saved / self.BEST
            if kept.is_dir():  # the best adapter as of this state, not one saved after it
                adapter_io.replace_folder(
                    self.best.directory, lambda tmp: shutil.copytree(kept, tmp, dirs_exist_ok=True)
                )
        self.model._initial_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        tmp = self.directory / f".tmp-epoch-{epoch + 1}"
        with _disk_errors(f"the training state of epoch {epoch + 1} in {self.directory}", epoch):
            try:
                self._write_state(tmp, epoch)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        done = self.directory / f"epoch-{epoch + 1}"
        shutil.rmtree(done, ignore_errors=True)
        os.replace(tmp, done)
        kept = {f"epoch-{epoch + 1 - i}" for i in range(self.keep)}
        for other in self.directory.iterdir():
            if other.name not in kept:
                shutil.rmtree(other, ignore_errors=True)
        if self.on_epoch:
            self.on_epoch(self.history)

    def _write_state(self, tmp, epoch):
        self.directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        (tmp / self.WEIGHTS).write_bytes(_weights_bytes(self.model))
        if self.best is not None and os.path.isdir(self.best.directory):
            shutil.copytree(self.best.directory, tmp / self.BEST)
        state = {"epoch": epoch + 1, "history": self.history, "best": self.best.state() if self.best else None}
        runs.write_json(tmp / self.STATE, state)

    def _agreed_state(self):
        """The newest state, or under multi-worker the newest every worker holds.

        Workers back up one after another, so a kill can leave one a epoch
        ahead: each keeps its last two states, and all resume from the
        oldest newest one. Workers that cannot agree stop together (one
        going on alone would wait on the others forever).
        """
        strategy = self.model.distribute_strategy
        self.keep = 2 if distribute.is_multi_worker(strategy) else 1
        held = self._complete()
        newest = max(held, default=0)
        epoch = distribute.smallest_on_workers(strategy, newest, max(newest, self.params.get("epochs") or 0))
        if not distribute.all_workers(strategy, epoch in held or not held):
            raise BackupUnreadable(
                f"The workers of this multi-worker run cannot resume from the same epoch (this one holds "
                f"epochs {sorted(held) or 'none'} in {self.directory}, another would start from epoch {epoch}): "
                "a worker's folder was lost. Delete the run folder's backup/ and every .worker-* folder "
                "in it to start the run over."
            )
        return held.get(epoch)

    def _complete(self):
        """{epoch: folder} of the complete states."""
        if not self.directory.is_dir():
            return {}
        return {int(p.name[6:]): p for p in self.directory.glob("epoch-*") if p.name[6:].isdigit()}


def _weights_bytes(model):
    """`model.save_weights`' `.weights.h5` content, built in memory.

    Written straight to disk, HDF5 meets a full disk half-way through and
    the process then crashes (SIGSEGV) when h5py cleans up; in memory, the
    bytes are written by Python, which raises an `OSError`.
    """
    buffer = io.BytesIO()
    store = saving_lib.H5IOStore(buffer, mode="w")
    saving_lib._save_state(model, weights_store=store, assets_store=None, inner_path="", visited_saveables=set())
    store.close()
    return buffer.getvalue()


class RunNotSaved(OSError):
    """Part of a run could not be written (a full disk, say); what was
    saved before is kept and the same command resumes from it."""


@contextlib.contextmanager
def _disk_errors(what, epoch):
    try:
        yield
    except OSError as e:
        kept = f"the state of epoch {epoch} is kept" if epoch else "no earlier epoch was saved"
        raise RunNotSaved(
            f"Could not write {what}: {e.strerror or e} (is the disk full?); {kept}. Free some space and "
            "run the same command again to resume."
        ) from None


class BackupUnreadable(ValueError):
    """A run's saved training state cannot be read; the message says what to delete."""


def _finite(*values):
    return all(np.isfinite(float(v)) for v in values)


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the message says what was kept."""


def check_options(epochs, batch_size, sequence_length, validation_split, learning_rate, preset, privacy=None):
    """Refuse impossible numeric options before anything is loaded."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("sequence_length", sequence_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if sequence_length < 3:
        raise ValueError(
            f"sequence_length {sequence_length} leaves no room for text between [CLS] and [SEP]; use 3 or more."
        )
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
    if privacy is not None and validation_split:
        raise ValueError(
            "With differential privacy a validation split would choose the adapter by private examples "
            "that no accountant counts: train without one (--validation-split 0; the last epoch's adapter "
            "is kept), or pass public data as --validation-data, and evaluate on data you may use freely."
        )


def check_validation_data(validation_data, validation_split, data):
    """Refuse a validation set given twice or one that is the training data."""
    if validation_data is None:
        return
    if validation_split:
        raise ValueError(
            f"validation_split {validation_split} and validation_data both give validation examples; "
            "pass one (--validation-split or --validation-data)."
        )
    if str(validation_data).startswith("tfds:"):
        raise ValueError("validation_data takes a folder or file; for a TFDS dataset use validation_split.")
    if not os.path.exists(validation_data):
        raise FileNotFoundError(f"validation_data {str(validation_data)!r} does not exist.")
    if os.path.abspath(validation_data) == os.path.abspath(data):
        raise ValueError("validation_data is the training data itself; pass held-out examples.")


def resolved_privacy(privacy):
    """`privacy` as a `DPConfig` (from itself, its config dict, or `None`)."""
    return privacy_lib.DPConfig.from_config(privacy) if isinstance(privacy, dict) else privacy


def check_private_options(privacy, fuse, strategy, bucket_by_sequence_length, early_stopping_patience,
                          validation_data=None):
    """Refuse, before anything loads, what breaks DP-SGD's assumptions."""
    if privacy is None:
        return
    refused = {
        "--strategy (several replicas)": strategy not in (None, "default"),
        "--bucket-by-length (batches are drawn by Poisson sampling)": bucket_by_sequence_length,
        "--early-stopping without --validation-data (it would stop on a metric of private data)":
            early_stopping_patience and validation_data is None,
        "--fuse (the fused adapters' own training is not accounted)": fuse,
    }
    named = [name for name, given in refused.items() if given]
    if named:
        raise ValueError(f"Differentially private training cannot use {', '.join(named)}; leave it out.")


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


@contextlib.contextmanager
def _run_folder(output):
    """Make the run folder; if this call made it and fails before writing
    anything into it (a data error, say), remove it again rather than leave
    a folder holding only `.lock`."""
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and set(os.listdir(output)) <= {".lock"}:
            shutil.rmtree(output, ignore_errors=True)
        raise


class RunInUse(ValueError):
    """Another process is training into the same run folder."""


class TrainingTimer(keras.callbacks.Callback):
    """Wall time of `fit` and the epochs it ran, for the summary line."""

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.epochs = 0

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self.start


class CollapseWarning(keras.callbacks.Callback):
    """Warn when every prediction of an epoch is one class.

    Reads the `predicted_classes` metric (`recipe.PredictedClasses`), on the
    validation data when there is some: a model answering one class for every
    example (a tagger answering `O` for every word) looks fine by its loss
    and accuracy on imbalanced data, and is the first symptom of a learning
    rate too low (or too high) for the method and task.
    """

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        key = "val_predicted_classes" if "val_predicted_classes" in logs else "predicted_classes"
        if key in logs and float(logs[key]) <= 1:
            where = "validation " if key.startswith("val_") else "training "
            warnings.warn(
                f"Epoch {epoch + 1}: every {where}prediction is the same class: the model has collapsed to "
                "one class (a tagger: 'O' for every word). Train longer, raise or lower --learning-rate, or "
                "try another --method (BENCHMARKS.md lists what learns each task).",
                stacklevel=2,
            )


# ------------------------------------------------------------------- train
def training_datasets(data, preprocessor, validation_split, task=tasks.TEXT_CLASSIFICATION, validation_data=None,
                      private=False, **kwargs):
    """(train, validation or None) from the data files of `task` (a name or
    `Task`): see its `datasets`. With `validation_data` (files of the same
    format), the validation set is read from them, in the training data's
    classes (a class the training data lacks is refused). `private`: the
    training data is read with the task's `private_data_options`."""
    task = tasks.get_task(task)
    private_options = task.private_data_options if private else {}
    train, validation = task.datasets(data, preprocessor, validation_split, **{**kwargs, **private_options})
    if validation_data is not None:
        task.check_data(validation_data)
        options = {**kwargs, "shuffle": False, "class_names": train.class_names}
        options.pop("bucket_by_sequence_length", None)
        validation, _ = task.datasets(validation_data, preprocessor, None, **options)
    return train, validation


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
    validation_split="auto",
    validation_data=None,
    seed=0,
    strategy=None,
    bucket_by_sequence_length=False,
    early_stopping_patience=None,
    pooling="auto",
    tensorboard=True,
    verbose=1,
    callbacks=(),
    fuse=None,
    overwrite=False,
    cache_frozen_layers=False,
    task="auto",
    privacy=None,
    **data_options,
):
    """Fine-tune an adapter (or an AdapterFusion) on a directory, `tfds:NAME`,
    a file of text pairs, a CoNLL file of tagged words or a SQuAD file.

    Args:
        data: a folder with one sub-folder per class, `tfds:NAME`, a
            `.jsonl` / `.csv` / `.tsv` file of text pairs
            (`keras_adapters.tasks.pair_classification`), a CoNLL file
            (`keras_adapters.tasks.token_classification.data`), or a SQuAD v1.1 JSON file
            (`keras_adapters.tasks.question_answering.data`).
        task: `"text_classification"`, `"pair_classification"`,
            `"token_classification"`, `"question_answering"`, or
            `"auto"`: told from `data` (`keras_adapters.tasks.detect_task`);
            a decoder's task (causal-lm data) is refused: it trains with
            `keras_adapters.runs.generation.train_causal_lm`.
        fuse: run folders of finished adapters (same backbone, checked): train
            an AdapterFusion over them for this task instead of a new adapter
            (`method` is then unused; the backbone is the runs').
        callbacks: extra Keras callbacks.
        overwrite: discard a run already in `output` that has other
            settings and start over. Without it such a run is refused
            (`RunSettingsChanged`); a run with the same settings resumes.
        validation_split: the share of the training data held out to choose
            the best epoch; `"auto"`: 0.1, or none with `privacy` or
            `validation_data`.
        validation_data: files of the same format as `data` (held-out
            examples of the same classes) to choose the best epoch by,
            instead of a split. With `privacy` they are not accounted: pass
            only data that is not private (it may then choose the epoch and
            stop early).
        privacy: a `ka.DPConfig` (or its config dict): train with DP-SGD
            (`keras_adapters.models.private_training`). Without validation,
            the last epoch's adapter is kept; heads start uniform (not at the
            private labels' frequencies) and no training text is kept for
            export's warm-up requests. `metrics.json` and the adapter folder
            record the guarantee (`"privacy"`).
        cache_frozen_layers: compute the encoder layers below the adapter
            once, before the first epoch, and train the layers above only
            (`keras_adapters.core.prefix_cache`; needs `target_layers` that leave
            the bottom layers out).
        **data_options: go to the dataset functions (e.g. `text_key`,
            `label_key`, `split` for TFDS; `text_a_key`, `text_b_key`,
            `label_key` for pair files; `stride`, `max_question_length`
            and `max_answer_length` for SQuAD files, kept with the head).

    Writes to `output` (a run folder): `adapter/` (the best adapter, as
    `save_adapter` writes it), `class_names.json`, `train_config.json`,
    `examples.json` (a few training inputs, for export's warm-up requests),
    `history.json` (every epoch, rewritten after each), `metrics.json`,
    `logs/` (TensorBoard). While training, `backup/` holds the state a rerun
    resumes from after an interruption (`RunBackup`); it is removed when
    training completes. The run folder never
    holds a copy of the backbone.

    Returns:
        (model, summary dict).
    """
    privacy = resolved_privacy(privacy)
    if validation_split == "auto":
        validation_split = None if privacy is not None or validation_data is not None else 0.1
    check_options(epochs, batch_size, sequence_length, validation_split, learning_rate, preset, privacy)
    check_validation_data(validation_data, validation_split, data)
    check_private_options(privacy, fuse, strategy, bucket_by_sequence_length, early_stopping_patience,
                          validation_data)
    task = resolve_task(data, task, data_options.get("text_b_key", "text_b"))
    method_name = None if fuse else get_adapter_config(method).method
    shortfall = tasks.shortfall(task, method_name)
    if shortfall:
        warnings.warn(f"--method {method_name}: {shortfall}", stacklevel=2)
    # First: a multi-worker strategy must exist before TensorFlow runs anything.
    strategy_name, strategy = strategy or "default", distribute.get_strategy(strategy)
    is_chief, worker = distribute.worker_role(strategy)
    run_output = Path(output)
    # Workers other than the chief keep their own copy (what they resume from) beside its run.
    output = run_output if is_chief else run_output / f".worker-{worker}"
    with _run_folder(output), run_lock(output):
        if validation_split and not str(data).startswith("tfds:"):
            validation_split = _usable_validation_split(data, validation_split, task, data_options)
        if precision in (None, "auto") and not overwrite:  # a run resumes in its own precision...
            recorded = _recorded(output, "precision")
            if recorded and precision_lib.usable_here(recorded):  # (a GPU's fp16 is not, on a CPU)
                precision = recorded
        precision = precision_lib.resolve_precision(precision, tasks.get_task(task))
        keras.utils.set_random_seed(seed)
        if fuse:
            preset = adapter_io.read_config(runs.adapter_dir(fuse[0]))["backbone"]["preset"]
        global_batch = distribute.global_batch(batch_size, strategy)
        train, validation = training_datasets(
            data,
            presets.load_preprocessor(preset, sequence_length),
            validation_split,
            task=task,
            validation_data=validation_data,
            private=privacy is not None,
            batch_size=global_batch,
            seed=seed,
            bucket_by_sequence_length=bucket_by_sequence_length,
            **data_options,
        )
        # Question answering trains on windows, more than its questions.
        steps = int(np.ceil(getattr(train, "num_windows", train.num_examples) / global_batch)) * epochs
        if learning_rate is None and not overwrite:  # a run resumes at its own rate, whatever today's default
            learning_rate = _recorded(output, "learning_rate")
        options = dict(sequence_length=sequence_length, dtype=precision, pooling=pooling, task=task)
        options.update(tasks.get_task(task).head_options(train, data_options))
        with strategy.scope():
            model, peak = _compiled_model(train, preset, method, fuse, learning_rate, steps, privacy, **options)
        monitor = ("val_" if validation is not None else "") + tasks.get_task(task).monitor
        if privacy is not None and validation is None:
            monitor = None  # no private metric chooses the adapter: the last epoch's is kept
        record = _run_record(
            model, data, fuse, train, validation,
            epochs=epochs, batch_size=batch_size, sequence_length=sequence_length, learning_rate=peak,
            strategy=strategy_name, num_replicas=strategy.num_replicas_in_sync, precision=precision,
            validation_split=validation_split, seed=seed, bucket_by_sequence_length=bucket_by_sequence_length,
            validation_data=None if validation_data is None else os.path.abspath(validation_data),
            cache_frozen_layers=cache_frozen_layers, task=task,
            **({"privacy": privacy.get_config()} if privacy is not None else {}),
        )
        _check_same_settings(output, record, overwrite)
        finished = _finished_summary(run_output)
        if finished is not None and overwrite:
            _discard(output)
        elif finished is not None:  # the same command again: nothing to do, nothing lost
            return runs.load_run(run_output), {**finished, "already_complete": True}
        runs.write_json(output / "train_config.json", record)
        runs.write_json(output / "class_names.json", train.class_names)
        if privacy is None:  # private texts never go into an export's warm-up file
            runs.keep_examples(output, task, data, data_options)
        callbacks = _callbacks(output, monitor, tensorboard, early_stopping_patience, callbacks)
        summary = _fit(model, output, train, validation, epochs, callbacks, monitor, verbose,
                       cache_frozen_layers, seed, global_batch if privacy is not None else None)
        if validation is not None:
            _tune(task, model, output, validation)
    if not is_chief:
        shutil.rmtree(output, ignore_errors=True)
    return model, summary


def _tune(task, model, output, validation):
    """Let the task adjust the saved (best) adapter's head and the returned
    model's on the validation data (multi-label thresholds)."""
    task = tasks.get_task(task)
    saved = runs.load_run(output)
    if task.tune(saved, validation):
        saved.save_adapter(runs.adapter_dir(output))
        task.tune(model, validation)


def _run_record(model, data, fuse, train, validation, **options):
    """What `train_config.json` records about a run."""
    local = not str(data).startswith("tfds:")
    return {
        "data": os.path.abspath(data) if local else str(data),
        "preset": model.preset,
        "method": None if fuse else model.adapter_config().get_config(),
        "fuse": [str(r) for r in fuse] if fuse else None,
        **options,
        "pooling": model.pooling,
        "num_train_examples": train.num_examples,
        "num_validation_examples": None if validation is None else validation.num_examples,
    }


def resolve_task(data, task, text_b_key="text_b"):
    """The task to train: `task`, or the one `data` is for when `"auto"`."""
    task = tasks.detect_task(data, text_b_key) if task in (None, "auto") else tasks.canonical_task(task)
    if tasks.get_task(task).decoder:
        raise ValueError(
            f"{data} is {tasks.cli_name(task)} data, which trains an adapter on a decoder: "
            "keras_adapters.runs.generation.train_causal_lm, or keras-adapters train DATA --preset DECODER."
        )
    tasks.get_task(task).check_data(data)
    return task


def _compiled_model(train, preset, method, fuse, learning_rate, steps, privacy=None, **options):
    """(the model a run trains, compiled; its peak learning rate)."""
    task = tasks.get_task(options["task"])
    # Heads start at the training labels' frequencies (`classification.start_from_prior`);
    # not under privacy: those frequencies are an uncounted statistic of the private data.
    prior = {"class_prior": train.class_prior} if getattr(train, "class_prior", None) and not privacy else {}
    if fuse:
        model = build_fusion_model(fuse, train.class_names, **options, **prior)
    else:
        model = runs.model_class(task.name).from_preset(
            preset, num_classes=len(train.class_names), method=get_adapter_config(method),
            class_names=train.class_names, **options, **prior,
        )
    peak = learning_rate or model.default_learning_rate
    # Under privacy each example's gradient is clipped instead of the batch's.
    clipping = {"clipnorm": None} if privacy is not None else {}
    model.compile(
        optimizer=recipe.make_optimizer(peak, steps, **clipping),
        metrics=task.metrics(model.num_classes, model.class_names),
        privacy=privacy,
    )
    return model, peak


def _fit(model, output, train, validation, epochs, callbacks, monitor, verbose, cache_frozen_layers, seed,
         private_batch=None):
    """Train (from cached frozen-layer outputs when asked) and finish the run folder; its summary.
    `private_batch`: DP-SGD's expected batch size (the model was compiled with `privacy`)."""
    fit_callbacks, timer, best, backup = callbacks
    examples = train.num_examples
    if cache_frozen_layers:
        train = prefix_cache.cache_frozen_prefix(model, train, seed=seed)
        if validation is not None:
            validation = prefix_cache.cache_frozen_prefix(model, validation, shuffle=False)
    batch = {"batch_size": private_batch} if private_batch else {}
    model.fit(train, validation_data=validation, epochs=epochs, callbacks=fit_callbacks, verbose=verbose, **batch)
    return _finish(model, output, timer, best, backup, examples, monitor)


def _usable_validation_split(data, validation_split, task, data_options):
    """`validation_split`, or `None` (with a warning) when it would hold no example."""
    task = tasks.get_task(task)
    total, unit = task.count_examples(data, data_options), task.unit
    if data_lib.validation_size(total, validation_split):
        return validation_split
    warnings.warn(
        f"A validation split of {validation_split} of the {total} {unit}s in {str(data)!r} holds no "
        f"{unit}; training without validation (the best adapter is chosen by its training metric). Add "
        "examples or raise --validation-split to validate.",
        stacklevel=3,
    )
    return None


class RunSettingsChanged(ValueError):
    """The run folder holds a run trained with other settings."""


def _check_same_settings(output, record, overwrite):
    """Resume only a run with the same settings; `overwrite` starts over.

    A rerun with another method, data or option would otherwise mix two runs
    in one folder (the old adapter next to the new settings).
    """
    recorded = _started_record(output)
    if recorded is None:
        return
    new = json.loads(json.dumps(runs.finite(record)))
    old = {"task": tasks.TEXT_CLASSIFICATION, **recorded}  # runs from before 0.6 had no task
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not changed:
        return
    if not overwrite:
        details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise RunSettingsChanged(
            f"{output} holds a run with other settings ({details}). Run with the same settings to "
            "resume it, pass --overwrite (Python: overwrite=True) to discard it and start over, "
            "or pass another --output."
        )
    _discard(output)


def _started_record(output):
    """The `train_config.json` of a run started in `output` (`None`: no run)."""
    started = any((output / name).exists() for name in ("adapter", BACKUP_DIR))
    config = output / "train_config.json"
    return runs.read_json(config) if started and config.is_file() else None


def _recorded(output, setting):
    """A setting (`"learning_rate"`, `"precision"`) that a run started in
    `output` recorded (`None`: no run), for defaults that changed since."""
    return (_started_record(output) or {}).get(setting)


def _discard(output):
    for name in RUN_FILES:
        path = output / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _finished_summary(output):
    """The `train` summary of a run in `output` that completed without
    diverging (metrics written, no backup left to resume from), else `None`."""
    path = output / "metrics.json"
    if (output / BACKUP_DIR).exists() or not (output / runs.ADAPTER_DIR).is_dir() or not path.is_file():
        return None
    summary = runs.read_json(path).get("train")
    return summary if isinstance(summary, dict) and not summary.get("diverged") else None


def build_fusion_model(
    run_dirs, class_names, sequence_length=128, dtype=None, pooling="auto", task=tasks.TEXT_CLASSIFICATION,
    class_prior=None,
):
    """A model with each run's adapter (named after its folder) and a new
    AdapterFusion over them with a head for `class_names` (and `task`), ready to train."""
    model, names = runs.load_runs(run_dirs, dtype=dtype, sequence_length=sequence_length)
    if model.fusion_names:
        raise ValueError("--fuse takes runs of single adapters, not fusion runs.")
    head = {"task": task} if pooling in (None, "auto") else {"pooling": pooling, "task": task}
    fuse = model.add_adapter_fusion(
        composition.Fuse(*names), num_classes=len(class_names), class_names=class_names, class_prior=class_prior,
        **head
    )
    model.train_adapter_fusion(fuse)
    return model


def _callbacks(output, monitor, tensorboard, patience, extra):
    """The run's callbacks: timer, best adapter, backup (+ TensorBoard, early stop)."""
    timer = TrainingTimer()
    best = BestAdapterCheckpoint(runs.adapter_dir(output), monitor=monitor)
    # history.json after every epoch: a killed run's progress stays readable.
    backup = RunBackup(
        output / BACKUP_DIR, best=best, on_epoch=lambda h: runs.write_json(output / "history.json", h)
    )
    callbacks = [*extra, timer, keras.callbacks.TerminateOnNaN(), CollapseWarning(), best, backup]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(output / "logs"), update_freq="epoch"))
    if patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience))
    return callbacks, timer, best, backup


def _finish(model, output, timer, best, backup, num_examples, monitor):
    """Save what the run produced; the summary that `metrics.json` holds.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (nothing non-finite
            is saved; an adapter saved at an earlier epoch is kept).
    """
    history = backup.history  # every epoch, those before a resume included
    losses = history.get("loss", [])
    diverged = not _finite(*losses)
    if best.best_epoch is None and not diverged:  # e.g. the monitor never appeared
        model.save_adapter(runs.adapter_dir(output))
    runs.write_json(output / "history.json", history)
    epochs_run = len(losses)
    seconds = timer.seconds
    summary = {
        "seconds": round(seconds, 2),
        "epochs_run": epochs_run,
        "examples_per_second": round(num_examples * timer.epochs / seconds, 2) if seconds else None,
        "best_metric": monitor,
        "best_value": None if best.best_epoch is None else best.best,
        "best_epoch": best.best_epoch,
    }
    summary["diverged"] = diverged
    runs.update_metrics_file(output, "train", summary)  # an evaluation recorded earlier stays
    if model.privacy is not None:
        if best.best_epoch not in (None, epochs_run):
            # Chosen after later epochs trained, by metrics of their weights too:
            # only the whole run's guarantee holds for it.
            adapter_io.record_privacy(runs.adapter_dir(output), model.privacy_report())
        runs.update_metrics_file(output, "privacy", model.privacy_report())
    shutil.rmtree(output / BACKUP_DIR, ignore_errors=True)
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
