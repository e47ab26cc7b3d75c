"""Causal-LM runs: `keras-adapters train DATA.jsonl --task causal-lm`, their
evaluation (perplexity of the completions; BLEU and chrF of greedy
generations against them, with sacrebleu) and predictions (generations).

A run folder holds `adapter/` (the adapter of the best epoch by validation
loss, or of the last epoch without validation data), `train_config.json`,
`history.json` and `metrics.json`, as a classification run's does.
"""

import shutil
import time
from pathlib import Path

import keras

from keras_adapters import tasks
from keras_adapters.io.adapter_folder import read_config
from keras_adapters.models.causal_lm import AdapterCausalLM
from keras_adapters.models.causal_lm import trained_chat
from keras_adapters.runs.folder import ADAPTER_DIR
from keras_adapters.runs.folder import adapter_dir
from keras_adapters.runs.folder import run_task
from keras_adapters.runs.folder import task_name
from keras_adapters.runs.folder import write_json
from keras_adapters.runs.training import run_lock
from keras_adapters.tasks import causal_lm as data_lib
from keras_adapters.tasks.causal_lm import prompts_and_references  # noqa: F401  (its 0.25 home)

TASK = tasks.CAUSAL_LM  # the task's name (0.25)
looks_like_causal_lm_data = data_lib.looks_like_causal_lm_data
DEFAULTS = {"method": "lora", "batch_size": 8, "max_new_tokens": data_lib.MAX_NEW_TOKENS}


def is_causal_lm_run(run_dir):
    """Whether the run (or adapter folder) holds a decoder's adapter."""
    try:
        return tasks.get_task(run_task(run_dir)).decoder
    except (OSError, ValueError, KeyError):
        return False


class _BestAdapter(keras.callbacks.Callback):
    """Save the adapter after each epoch that lowers the validation loss, the
    mean negative log-likelihood per completion token (`val_nll`), so the run
    keeps the best one (without validation data: every epoch, the last stays)."""

    def __init__(self, folder, validated):
        super().__init__()
        self.folder, self.validated = folder, validated
        self.best, self.best_epoch = float("inf"), None

    def on_epoch_end(self, epoch, logs=None):
        self.epochs = epoch + 1
        loss = (logs or {}).get("val_nll") if self.validated else None
        if loss is None or loss < self.best:
            self.best, self.best_epoch = (loss if loss is not None else self.best), epoch + 1
            self.model.save_adapter(self.folder)

    def on_train_end(self, logs=None):
        if self.best_epoch is None:  # no finite validation loss: keep the last epoch's adapter
            self.best_epoch = getattr(self, "epochs", None)
            self.model.save_adapter(self.folder)


def train_causal_lm(data, output, preset, method=None, epochs=1, batch_size=None, sequence_length=None,
                    learning_rate=None, validation_data=None, seed=0, chat=False, verbose=1, overwrite=False,
                    bucket_by_sequence_length=False):
    """Train an adapter on a JSONL file of prompt/completion or chat records.

    Returns:
        (model, summary dict).
    """
    output = Path(output)
    if (output / ADAPTER_DIR).exists() and not overwrite:
        raise ValueError(f"{output} already holds a run; pass --overwrite to train it again, or another --output.")
    batch_size = batch_size or DEFAULTS["batch_size"]
    records = data_lib.read(data)
    validation_records = data_lib.read(validation_data) if validation_data else None
    keras.utils.set_random_seed(seed)
    # Unless told: 512 tokens, or the backbone's positions if it has fewer (AdapterCausalLM's default).
    model = AdapterCausalLM.from_preset(preset, method=method or DEFAULTS["method"], sequence_length=sequence_length)
    train = model.dataset(records, batch_size, shuffle=True, chat=chat, seed=seed,
                          bucket_by_sequence_length=bucket_by_sequence_length)
    validation = model.dataset(validation_records, batch_size, chat=chat) if validation_records else None
    # Saved with the adapter: prompts it answers later are written as in training (conversations always are).
    model.chat = bool(chat or any("messages" in r for r in records))
    model.compile(learning_rate=learning_rate)
    output.mkdir(parents=True, exist_ok=True)
    if overwrite and (output / ADAPTER_DIR).exists():
        shutil.rmtree(output / ADAPTER_DIR)
    best = _BestAdapter(output / ADAPTER_DIR, validation is not None)
    start = time.perf_counter()
    with run_lock(output):
        history = model.fit(train, validation_data=validation, epochs=epochs, callbacks=[best], verbose=verbose)
    seconds = time.perf_counter() - start
    tokens = sum(int(w.numpy().sum()) for _, _, w in train) * epochs
    summary = {
        "task": TASK, "data": str(data), "preset": model.preset, "method": model.adapter_config("default").get_config(),
        "epochs": epochs, "batch_size": batch_size, "sequence_length": model.sequence_length, "chat": model.chat,
        "learning_rate": float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)), "seed": seed,
        "bucket_by_sequence_length": bool(bucket_by_sequence_length),
        "validation_data": str(validation_data) if validation_data else None, "examples": len(records),
        "seconds": seconds, "completion_tokens_per_second": tokens / seconds, "best_epoch": best.best_epoch,
    }
    write_json(output / "train_config.json", summary)
    write_json(output / "history.json", history.history)
    if validation is not None:
        write_json(output / "metrics.json", {"validation_loss": best.best, "best_epoch": best.best_epoch})
    return model, summary


def run_chat(run_dir):
    """Whether the run wrote its prompts under the chat template (`--chat`, or conversations)."""
    directory = adapter_dir(run_dir)
    return trained_chat(directory, read_config(directory)["task"])


def load_causal_lm_runs(run_dirs):
    """(one model holding every run's adapter, named after its folder; the names).
    The runs must share a backbone checkpoint (checked on load)."""
    names = [task_name(r) for r in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"Run folders must have distinct names to name their adapters: {names}.")
    chats = {run_chat(r) for r in run_dirs}
    if len(chats) > 1:
        raise ValueError("Some of these runs wrote prompts under the chat template and some did not; "
                         "load (or export) them separately.")
    preset = read_config(adapter_dir(run_dirs[0]))["backbone"]["preset"]
    model = AdapterCausalLM.from_preset(preset, method=None, chat=chats.pop())
    for run_dir, name in zip(run_dirs, names):
        model.load_adapter(adapter_dir(run_dir), name=name)
    return model, names


def load_causal_lm_run(run_dir, dtype=None):
    return AdapterCausalLM.from_adapter(adapter_dir(run_dir), dtype=dtype)


def evaluate_causal_lm(run_dir, data, batch_size=8, max_new_tokens=None, model=None):
    """The run's report on a JSONL file (`keras_adapters.tasks.causal_lm.CausalLM.evaluate`:
    perplexity, and BLEU and chrF of greedy generations)."""
    model = model or load_causal_lm_run(run_dir)
    return data_lib.TASK.evaluate(model, data, batch_size=batch_size, max_new_tokens=max_new_tokens)


def predict_causal_lm(run_dir, prompts, max_new_tokens=None, sampler="greedy", batch_size=8):
    """`[{"prompt", "generation"}]`: what the run's adapter writes after each prompt."""
    return data_lib.TASK.predict(load_causal_lm_run(run_dir), [list(prompts)], batch_size=batch_size,
                                        max_new_tokens=max_new_tokens, sampler=sampler)


def format_report(report):
    return data_lib.TASK.format_report(report)
