"""The adapter folder: `adapter_config.json` + `adapter_model.safetensors`.

A folder holds one named adapter (or one AdapterFusion) and nothing else:
its trainable weights (its units, its head, its copies of original weights
it trains), keyed by place (`transformer_layer_0/self_attention_layer/query/lora_a`,
`logits/kernel`), never by position; the JSON says its name, which method
and fields built it, which backbone it belongs to (preset, architecture and
a fingerprint of its weights), the task (classes, pooling, sequence length)
and a sha256 of the weights file, so a truncated or altered file is caught
before anything is loaded. Safetensors holds raw tensors only: no pickle, no
code. A fusion folder also holds its adapters' folders under `adapters/`.

This module reads and writes folders and checks them; it knows nothing of
models (the model calls it with plain dicts and arrays).
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from keras_adapters.backbones import bert
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.methods.registry import known_fields
from keras_adapters.version import __version__

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MEMBERS_DIR = "adapters"
FORMAT = "keras-adapters/adapter"
#: 1: one unnamed adapter per folder (0.1); 2: named adapters and fusions.
FORMAT_VERSION = 2
KNOWN_KEYS = {
    "format", "format_version", "library_version", "name", "method", "adapter",
    "fusion", "backbone", "task", "weights", "privacy",
}
#: The keys of each section this release writes or reads (the method's own
#: fields are checked against its config class).
KNOWN_SECTION_KEYS = {
    "backbone": {"preset", "architecture", "weights_sha256", "tokenizer"},
    # and the head settings of the folder's task (`unknown_keys(task_keys=...)`)
    "task": {"type", "num_classes", "class_names", "pooling", "dropout", "sequence_length", "multi_label"},
    "weights": {"file", "sha256", "num_tensors", "num_parameters"},
    "fusion": {"adapters", "config"},
}


class AdapterFormatError(ValueError):
    """An adapter folder is missing, corrupt, or does not fit the model."""


def file_sha256(path):
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path, write):
    """Write via a temporary file in the same folder, then rename.

    A killed write leaves the old file and a `.tmp-<name>-*` file, which the
    next write of `path` removes.
    """
    folder, name = os.path.split(os.path.abspath(path))
    for stale in Path(folder).glob(f".tmp-{name}-*"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{name}-")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a serving account must read it
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def replace_folder(directory, fill):
    """Write a folder all at once: `fill(tmp)` fills a hidden sibling, which
    then takes `directory`'s place.

    A write killed half-way leaves the old folder (and a `.tmp-*` sibling,
    removed by the next write). The swap is two renames; if the process dies
    between them the old folder waits as `.<name>.old`: readers read it
    there, and the next write puts it back first.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _recover(directory)
    for stale in directory.parent.glob(f".tmp-{directory.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".tmp-{directory.name}-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a serving account must read it
    old = _old_copy(directory)
    try:
        fill(str(tmp))
        if old.exists():
            shutil.rmtree(old)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return str(directory)


def record_privacy(directory, report):
    """Replace the differential-privacy guarantee a saved adapter folder
    records (its weights stay as they are)."""
    path = Path(directory) / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    config["privacy"] = dict(report)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))


def _old_copy(directory):
    return directory.parent / f".{directory.name}.old"


def _recover(directory):
    """Put back a folder whose replacement was interrupted between renames
    (the writer's job: a reader moving it back would break a live swap)."""
    old = _old_copy(directory)
    if not directory.exists() and old.is_dir():
        os.replace(old, directory)


def write_folder(directory, config, tensors):
    """Write `tensors` (key -> array) and `config` (with its `weights` section
    filled in here) to `directory`. Returns the folder path."""
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()}
    weights_path = directory / WEIGHTS_FILE
    # Serialized in memory and written by Python: a full disk is an OSError,
    # not a safetensors error.
    data = save(tensors, metadata={"format": FORMAT})
    atomic_write(str(weights_path), lambda tmp: Path(tmp).write_bytes(data))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        **config,
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": file_sha256(weights_path),
            "num_tensors": len(tensors),
            "num_parameters": int(sum(t.size for t in tensors.values())),
        },
    }
    atomic_write(
        str(directory / CONFIG_FILE),
        lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"),
    )
    return str(directory)


def _readable_copy(directory):
    """The folder to read: `directory`, or the old copy a save left while
    swapping folders (or when killed between the two renames)."""
    old = _old_copy(directory)
    return old if not directory.is_dir() and old.is_dir() else directory


def read_config(directory):
    """Read and check `adapter_config.json` (not the weights); never changes
    the folder, so it is safe while another process saves it.

    Folders written by keras-adapters 0.1 (format version 1) are read as
    unnamed adapters. Keys this release does not know are left for
    `unknown_keys` to report.
    """
    directory = _readable_copy(Path(directory))
    config_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise AdapterFormatError(f"Adapter folder {str(directory)!r} does not exist.")
    if not config_path.is_file():
        raise AdapterFormatError(
            f"{str(directory)!r} has no {CONFIG_FILE}; it is not an adapter "
            "folder written by save_adapter()."
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFormatError(f"{config_path} is not valid JSON: {e}.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise AdapterFormatError(f"{config_path} is not a keras-adapters adapter config.")
    version = _format_version(config, config_path)
    if version < 2:  # 0.1: "adapter" held the method's config, "method" its name
        config["method"] = config.get("adapter")
        config.setdefault("name", None)
    body = "fusion" if "fusion" in config else "method"
    for key in (body, "backbone", "task", "weights"):
        if not isinstance(config.get(key), dict):
            raise AdapterFormatError(f"{config_path} lacks the {key!r} section.")
    _check_sequence_length(config, config_path)
    return config


def _format_version(config, config_path):
    version = config.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise AdapterFormatError(
            f"{config_path} has format_version {version!r}, which no keras-adapters writes (it writes "
            f"whole numbers 1 to {FORMAT_VERSION}): the file was edited or damaged. Save the adapter again."
        )
    if version > FORMAT_VERSION:
        raise AdapterFormatError(
            f"{config_path} has format version {version}; this keras-adapters ({__version__}) reads up "
            f"to {FORMAT_VERSION}. Upgrade keras-adapters."
        )
    return version


def _check_sequence_length(config, config_path):
    length = config["task"].get("sequence_length")
    limit = (config["backbone"].get("architecture") or {}).get("max_sequence_length")
    if length is None:
        return
    if isinstance(length, bool) or not isinstance(length, int) or length < 3 or (limit and length > limit):
        raise AdapterFormatError(
            f"{config_path}: task.sequence_length {length!r} does not fit the backbone, which has "
            f"{limit} positions (use 3 to {limit}); the file was edited or damaged. Save the adapter again."
        )


def unknown_keys(config, task_keys=()):
    """Keys of a folder's JSON this release does not know, as dotted paths
    (`task.foo`); `task_keys`: the head settings of the folder's task. The
    method's own fields are checked by `method_config`."""
    found = {str(k) for k in set(config) - KNOWN_KEYS}
    for section, known in KNOWN_SECTION_KEYS.items():
        known = known | set(task_keys) if section == "task" else known
        if isinstance(config.get(section), dict):
            found |= {f"{section}.{k}" for k in set(config[section]) - known}
    return sorted(found)


def warn_unknown_keys(config, source, task_keys=()):
    """One warning naming every unknown key (a newer release wrote the folder)."""
    unknown = unknown_keys(config, task_keys)
    if unknown:
        warnings.warn(
            f"{source}/{CONFIG_FILE} has keys this keras-adapters ({__version__}) does not know, "
            f"ignored: {unknown} (written by keras-adapters {config.get('library_version')}).",
            stacklevel=3,
        )


def task_type(config, source, known):
    """The task a folder's head does; older folders are text classification.

    Args:
        known: the task names this process can hold (`tasks.available_tasks()`).
    """
    task = config["task"].get("type", "text_classification")
    if task not in known:
        raise AdapterFormatError(
            f"{source}: its head does {task!r}, which this keras-adapters cannot hold (its heads do "
            f"{', '.join(known)}); upgrade keras-adapters, or register that task, to load it."
        )
    return task


def method_config(config, source):
    """The method config of a folder's JSON; unknown fields warn, not fail."""
    fields = dict(config["method"])
    try:
        extra = sorted(set(fields) - known_fields(fields.get("method")) - {"method"})
    except ValueError as e:
        raise AdapterFormatError(f"{source}: {e}") from None
    if extra:
        warnings.warn(
            f"{source}: fields {extra} of method {fields['method']!r} are unknown to this "
            f"keras-adapters ({__version__}) and are ignored.",
            stacklevel=2,
        )
        fields = {k: v for k, v in fields.items() if k not in extra}
    try:
        return get_adapter_config(fields)
    except (ValueError, TypeError) as e:
        raise AdapterFormatError(f"{source}: {e}") from None


def read_weights(directory, config):
    """Check the weights file against the recorded sha256, then read it.

    The bytes are read once, so the checksum and the tensors are of the same
    file; a file that resolves outside the folder (a link) is refused.
    """
    from safetensors.numpy import load

    directory = _readable_copy(Path(directory))
    name = config["weights"].get("file", WEIGHTS_FILE)
    weights_path = directory / str(name)
    if Path(str(name)).name != str(name):
        raise AdapterFormatError(
            f"{directory / CONFIG_FILE} names the weights file {name!r}, which is not a file in "
            "the folder itself; adapter folders never point elsewhere."
        )
    if not weights_path.is_file():
        raise AdapterFormatError(f"The adapter weights file {weights_path} is missing.")
    if weights_path.resolve().parent != directory.resolve():
        raise AdapterFormatError(
            f"{weights_path} is a link to {weights_path.resolve()}, outside the adapter folder; adapter "
            "folders hold their own weights. Copy the file into the folder."
        )
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != config["weights"].get("sha256"):
        raise AdapterFormatError(
            f"{weights_path} does not match the sha256 recorded in "
            f"{CONFIG_FILE}: the file is truncated, corrupt or from another "
            "save. Save the adapter again or restore the file."
        )
    try:
        tensors = load(data)
    except Exception as e:
        raise AdapterFormatError(f"{weights_path} is not a readable safetensors file: {e}") from e
    _check_finite(tensors, weights_path)
    return tensors


def _check_finite(tensors, weights_path):
    bad = sorted(k for k, t in tensors.items() if t.dtype.kind == "f" and not np.isfinite(t).all())
    if bad:
        raise AdapterFormatError(
            f"{weights_path} holds NaN or infinite values in {bad[:5]}{'...' if len(bad) > 5 else ''}: "
            "the adapter was saved from a diverged training. Train it again with a lower learning rate."
        )


def read_folder(directory, attempts=10):
    """(config, tensors) of one save of `directory`.

    Another process may replace the folder while it is read (a training
    saving its best epoch): the config then names other weights than the
    file holds, or the folder is briefly away. So a failed read starts again
    (a damaged folder is reported after about half a second of retries;
    comparing checksums cannot tell a replaced folder from a damaged one
    when a save writes back earlier weights).
    """
    for attempt in range(attempts):
        try:
            config = read_config(directory)
            return config, read_weights(directory, config)
        except (AdapterFormatError, OSError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))  # a save's two renames take microseconds


def check_backbone(config, architecture, fingerprint, source):
    """Refuse a backbone other than the one the adapter was trained on."""
    expected = config["backbone"]
    architecture = bert.with_activation(architecture)
    recorded = bert.with_activation(expected.get("architecture") or {})
    if recorded and _except_activation(recorded) == _except_activation(architecture):
        _warn_activation(source, recorded.get("activation"), architecture.get("activation"))
    elif architecture != recorded:
        diffs = sorted(k for k in set(architecture) | set(recorded) if architecture.get(k) != recorded.get(k))
        details = ", ".join(
            f"{k}: adapter {recorded.get(k)!r} vs backbone {architecture.get(k)!r}" for k in diffs
        )
        raise AdapterFormatError(
            f"The adapter in {source} was trained for another backbone "
            f"({details}). Load it with the backbone it was saved for "
            f"(preset {expected.get('preset')!r})."
        )
    if fingerprint != expected.get("weights_sha256"):
        raise AdapterFormatError(
            f"The adapter in {source} was trained on a different checkpoint of "
            f"this architecture (weights fingerprint differs). Pass the "
            f"checkpoint it was saved for (preset {expected.get('preset')!r})."
        )


def _except_activation(architecture):
    return {k: v for k, v in architecture.items() if k != "activation"}


def _warn_activation(source, recorded, computed):
    if recorded != computed:
        warnings.warn(
            f"The adapter in {source} was trained on this checkpoint computing its feed-forward activation as "
            f"{recorded!r} (keras-adapters before 0.18 used keras-hub's tanh GELU for every BERT); this model "
            f"computes {computed!r}, so its outputs move slightly (about 1e-3 in probabilities on MiniLM). "
            "AdapterModel.from_adapter rebuilds the backbone as the adapter was trained; or train it again.",
            stacklevel=3,
        )


def check_tokenizer(config, tokenizer, source):
    """Refuse a tokenizer that turns texts into other ids than the one the
    adapter was trained with (folders from before 0.8 recorded none)."""
    recorded = config["backbone"].get("tokenizer")
    if not recorded or not tokenizer or recorded == tokenizer:
        return
    diffs = sorted(k for k in set(recorded) | set(tokenizer) if recorded.get(k) != tokenizer.get(k))
    details = ", ".join(
        f"{k}: adapter {recorded.get(k)!r} vs this model {tokenizer.get(k)!r}"
        for k in diffs
        if k != "vocabulary_sha256"
    )
    if "vocabulary_sha256" in diffs:
        details = ", ".join(filter(None, [details, "another vocabulary"]))
    raise AdapterFormatError(
        f"The adapter in {source} was trained with another tokenizer ({details}): it would read texts as "
        f"other tokens. Load it with the preset it was saved for ({config['backbone'].get('preset')!r})."
    )


def check_tensors(shapes, tensors, source):
    """Every expected key present with its shape, nothing else."""
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    if missing or unexpected:
        raise AdapterFormatError(
            f"The weights in {source} do not fit this model: missing "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != tuple(shape):
            raise AdapterFormatError(
                f"{key} in {source} has shape {tensors[key].shape}, the model expects {tuple(shape)}."
            )
