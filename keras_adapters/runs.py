"""The run folder that `keras-adapters train` writes, and reading it back.

`RUN_DIR/adapter/` (what `save_adapter` writes; for an AdapterFusion run,
the fusion with its adapters inside), `class_names.json`,
`train_config.json`, `history.json`, `metrics.json` and TensorBoard `logs/`.
"""

import json
import math
import os
from pathlib import Path

from keras_adapters.adapter_io import atomic_write
from keras_adapters.adapter_io import read_config
from keras_adapters.text_classifier import AdapterTextClassifier

ADAPTER_DIR = "adapter"


def adapter_dir(run_dir):
    return str(Path(run_dir) / ADAPTER_DIR)


def load_run(run_dir, dtype=None):
    """The model saved in a run folder, with its adapter (or fusion) active."""
    return AdapterTextClassifier.from_adapter(adapter_dir(run_dir), dtype=dtype)


def task_name(run_dir):
    """An adapter / signature name from a run folder's name."""
    name = os.path.basename(os.path.normpath(str(run_dir)))
    cleaned = "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()
    return cleaned or "task"


def load_runs(run_dirs, dtype=None, sequence_length=None):
    """One model holding every run's adapter, each named after its folder.

    The runs must share a backbone checkpoint (checked on load). The
    sequence length is the first run's unless given.
    """
    run_dirs = [str(r) for r in run_dirs]
    names = [task_name(r) for r in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"Run folders must have distinct names to name their adapters: {names}.")
    model = None
    for run_dir, name in zip(run_dirs, names):
        if model is None:
            config = read_config(adapter_dir(run_dir))
            model = AdapterTextClassifier.from_preset(
                config["backbone"]["preset"],
                method=None,
                sequence_length=sequence_length or config["task"].get("sequence_length") or 128,
                dtype=dtype,
            )
        model.load_adapter(adapter_dir(run_dir), name=name)
    return model, names


def read_json(path):
    return json.loads(Path(path).read_text())


def finite(obj):
    """`obj` with NaN and infinities as `None`, so that it is valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path, obj):
    """Write `obj` as valid JSON (NaN as null), atomically: a killed write
    leaves the old file."""
    text = json.dumps(finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(str(path), lambda tmp: Path(tmp).write_text(text))


def update_metrics_file(run_dir, key, value):
    path = Path(run_dir) / "metrics.json"
    metrics = read_json(path) if path.is_file() else {}
    metrics[key] = value
    write_json(path, metrics)
