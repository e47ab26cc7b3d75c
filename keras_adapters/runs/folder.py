"""The run folder that `keras-adapters train` writes, and reading it back.

`RUN_DIR/adapter/` (what `save_adapter` writes; for an AdapterFusion run,
the fusion with its adapters inside), `class_names.json`,
`train_config.json`, `examples.json` (a few training inputs: export's
warm-up requests), `history.json`, `metrics.json` and TensorBoard `logs/`.
Commands that read a run also take an adapter folder alone (what
`save_adapter` or `keras-adapters convert` wrote).
"""

import json
import math
import os
import warnings
from pathlib import Path

from keras_adapters.io.adapter_folder import CONFIG_FILE
from keras_adapters.io.adapter_folder import atomic_write
from keras_adapters.io.adapter_folder import read_config
from keras_adapters.io.adapter_folder import task_type as adapter_task_type
from keras_adapters import tasks
from keras_adapters.models import AdapterTextClassifier
from keras_adapters.models import model_class

ADAPTER_DIR = "adapter"
EXAMPLES = "examples.json"


def adapter_dir(run_dir):
    """A run's adapter folder; an adapter folder itself (from `save_adapter`
    or `keras-adapters convert`) stands for a run of its own."""
    if (Path(run_dir) / CONFIG_FILE).is_file():
        return str(run_dir)
    return str(Path(run_dir) / ADAPTER_DIR)


def load_run(run_dir, dtype=None):
    """The model saved in a run folder, with its adapter (or fusion) active."""
    return model_class(run_task(run_dir)).from_adapter(adapter_dir(run_dir), dtype=dtype)


def run_task(run_dir):
    """The task a run's adapter does (`keras_adapters.tasks`), from its folder."""
    return adapter_task_type(read_config(adapter_dir(run_dir)), adapter_dir(run_dir), tasks.available_tasks())


def task_name(run_dir):
    """An adapter / signature name from a run folder's name."""
    name = os.path.basename(os.path.normpath(str(run_dir)))
    cleaned = "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()
    return cleaned or "task"


def load_runs(run_dirs, dtype=None, sequence_length=None):
    """One model holding every run's adapter, each named after its folder.

    The runs must share a backbone checkpoint (checked on load). Each
    adapter's head keeps its run's sequence length; the model's is the
    longest of them unless given.
    """
    run_dirs = [str(r) for r in run_dirs]
    names = [task_name(r) for r in run_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"Run folders must have distinct names to name their adapters: {names}.")
    configs = [read_config(adapter_dir(r)) for r in run_dirs]
    decoders = [r for r in run_dirs if tasks.get_task(run_task(r)).decoder]
    if decoders:
        raise ValueError(f"{', '.join(decoders)}: decoder runs load with "
                         "keras_adapters.runs.generation.load_causal_lm_runs, not beside encoder runs.")
    lengths = [c["task"].get("sequence_length") or 128 for c in configs]
    model = AdapterTextClassifier.from_preset(
        configs[0]["backbone"]["preset"],
        method=None,
        sequence_length=sequence_length or max(lengths),
        dtype=dtype,
    )
    for run_dir, name in zip(run_dirs, names):
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


def keep_examples(run_dir, task, data, options):
    """Keep a few of the training inputs in the run (`examples.json`), so that
    an export can warm a server up with real requests after the data is gone.
    Best effort: a task that cannot sample its data trains all the same."""
    inputs, error = _sampled(task, data, options)
    if error:
        warnings.warn(f"No {EXAMPLES} kept (export's warm-up requests are made of it): {error}", stacklevel=3)
    elif inputs is not None:
        write_json(Path(run_dir) / EXAMPLES, {"inputs": inputs})


def example_inputs(run_dir):
    """(inputs, why not): {input field: [texts]} from the run's `examples.json`
    or, for a run of an older release, its training data if that is still
    there and readable with the default columns; else `None` and the reason."""
    path = Path(run_dir) / EXAMPLES
    if path.is_file():
        return read_json(path)["inputs"], None
    config = Path(run_dir) / "train_config.json"
    if adapter_dir(run_dir) == str(run_dir):
        return None, f"it is an adapter folder, not a run that keeps {EXAMPLES}"
    record = read_json(config) if config.is_file() else {}
    if record.get("privacy"):
        return None, (
            "it was trained with differential privacy, and its training texts stay out of exports; give "
            "warm-up examples that are not private (Python: examples={'text': [...]})"
        )
    data = record.get("data")
    if not data or not (str(data).startswith("tfds:") or Path(data).exists()):
        return None, f"it keeps no {EXAMPLES} and its training data {data!r} is not where it was"
    inputs, error = _sampled(run_task(run_dir), data, {})
    if error:
        return None, f"it keeps no {EXAMPLES} and its training data could not be read: {error}"
    if inputs is None:
        return None, f"it keeps no {EXAMPLES} (trained on {data}, which export does not sample)"
    return inputs, None


def _sampled(task, data, options):
    """({input field: [texts]}, None); `None` for inputs when the task
    samples nothing of `data` (TFDS); (None, the error) when reading failed."""
    task = tasks.get_task(task)
    try:
        columns = task.sample_inputs(data, options)
    except (OSError, ValueError, NotImplementedError) as e:  # (DatasetError is a ValueError)
        return None, str(e)
    return (None if columns is None else dict(zip(task.input_fields, columns))), None


def update_metrics_file(run_dir, key, value):
    path = Path(run_dir) / "metrics.json"
    metrics = read_json(path) if path.is_file() else {}
    metrics[key] = value
    write_json(path, metrics)
