"""The adapter folder: `adapter_config.json` + `adapter_model.safetensors`.

The folder holds what training changed and nothing else: the trainable
weights (adapter, head, and whatever original weights the method trains),
keyed by variable path (`transformer_layer_0/self_attention_layer/query/lora_a`,
`logits/kernel`), never by position. The JSON says which method and fields
built them, which backbone they belong to (preset, architecture and a
fingerprint of its weights), the task (classes, pooling, sequence length) and
a sha256 of the weights file, so a truncated or altered file is caught before
anything is loaded. Safetensors holds raw tensors only: no pickle, no code.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from keras_adapters import presets
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.version import __version__

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FORMAT = "keras-adapters/adapter"
FORMAT_VERSION = 1


class AdapterFormatError(ValueError):
    """An adapter folder is missing, corrupt, or does not fit the model."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trainable_weights_by_path(model):
    """dict of variable path -> variable, for every trainable weight."""
    weights = {}
    for w in model.trainable_weights:
        if w.path in weights and weights[w.path] is not w:
            raise AdapterFormatError(
                f"Two trainable weights share the path {w.path!r}; give the "
                "layers distinct names before saving."
            )
        weights[w.path] = w
    return weights


def _atomic_write(path, write):
    """Write via a temporary file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_adapter(model, directory):
    """Save `model`'s trainable weights and config to `directory`.

    Returns:
        The folder path.
    """
    from safetensors.numpy import save_file

    if model.adapter_config is None:
        raise AdapterFormatError(
            "This model has no adapter (it was merged); save it with "
            "model.save('model.keras') or export it instead."
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {
        path: np.ascontiguousarray(np.asarray(w.numpy(), dtype=np.float32))
        for path, w in trainable_weights_by_path(model).items()
    }
    weights_path = directory / WEIGHTS_FILE
    _atomic_write(
        str(weights_path),
        lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}),
    )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "method": model.adapter_config.method,
        "adapter": model.adapter_config.get_config(),
        "backbone": {
            "preset": model.preset,
            "architecture": presets.architecture_config(model.backbone),
            "weights_sha256": model.backbone_fingerprint,
        },
        "task": {
            "type": "text_classification",
            "num_classes": model.num_classes,
            "class_names": model.class_names,
            "multi_label": model.multi_label,
            "pooling": model.pooling,
            "dropout": model.dropout,
            "sequence_length": model.sequence_length,
        },
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": _sha256(weights_path),
            "num_tensors": len(tensors),
            "num_parameters": int(sum(t.size for t in tensors.values())),
        },
    }
    _atomic_write(
        str(directory / CONFIG_FILE),
        lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"),
    )
    return str(directory)


def read_adapter_config(directory):
    """Read and check `adapter_config.json` (not the weights)."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise AdapterFormatError(f"Adapter folder {str(directory)!r} does not exist.")
    if not config_path.is_file():
        raise AdapterFormatError(
            f"{str(directory)!r} has no {CONFIG_FILE}; it is not an adapter "
            "folder written by save_adapter()."
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterFormatError(f"{config_path} is not valid JSON: {e}.") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise AdapterFormatError(f"{config_path} is not a keras-adapters adapter config.")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise AdapterFormatError(
            f"{config_path} has format version {config['format_version']}; this "
            f"keras-adapters ({__version__}) reads up to {FORMAT_VERSION}. "
            "Upgrade keras-adapters."
        )
    for key in ("adapter", "backbone", "task", "weights"):
        if key not in config:
            raise AdapterFormatError(f"{config_path} lacks the {key!r} section.")
    # Fails with the list of known methods on an unknown name.
    get_adapter_config(config["adapter"])
    return config


def read_adapter_weights(directory, config):
    """Check the weights file against the recorded sha256, then read it."""
    from safetensors.numpy import load_file

    weights_path = Path(directory) / config["weights"]["file"]
    if not weights_path.is_file():
        raise AdapterFormatError(f"The adapter weights file {weights_path} is missing.")
    if _sha256(weights_path) != config["weights"]["sha256"]:
        raise AdapterFormatError(
            f"{weights_path} does not match the sha256 recorded in "
            f"{CONFIG_FILE}: the file is truncated, corrupt or from another "
            "save. Save the adapter again or restore the file."
        )
    try:
        return load_file(str(weights_path))
    except Exception as e:
        raise AdapterFormatError(f"{weights_path} is not a readable safetensors file: {e}") from e


def check_backbone(model, config, source):
    """Refuse a backbone other than the one the adapter was trained on."""
    expected = config["backbone"]
    actual_arch = presets.architecture_config(model.backbone)
    if actual_arch != expected["architecture"]:
        diffs = sorted(
            k
            for k in set(actual_arch) | set(expected["architecture"])
            if actual_arch.get(k) != expected["architecture"].get(k)
        )
        details = ", ".join(
            f"{k}: adapter {expected['architecture'].get(k)!r} vs backbone {actual_arch.get(k)!r}"
            for k in diffs
        )
        raise AdapterFormatError(
            f"The adapter in {source} was trained for another backbone "
            f"({details}). Load it with the backbone it was saved for "
            f"(preset {expected['preset']!r})."
        )
    if model.backbone_fingerprint != expected["weights_sha256"]:
        raise AdapterFormatError(
            f"The adapter in {source} was trained on a different checkpoint of "
            f"this architecture (weights fingerprint differs). Pass the "
            f"checkpoint it was saved for (preset {expected['preset']!r})."
        )


def assign_adapter_weights(model, tensors, source):
    """Assign saved tensors to the model's trainable weights, by path."""
    targets = trainable_weights_by_path(model)
    missing = sorted(set(targets) - set(tensors))
    unexpected = sorted(set(tensors) - set(targets))
    if missing or unexpected:
        raise AdapterFormatError(
            f"The weights in {source} do not fit this model: missing "
            f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}."
        )
    for path, variable in targets.items():
        value = tensors[path]
        if tuple(value.shape) != tuple(variable.shape):
            raise AdapterFormatError(
                f"{path} in {source} has shape {value.shape}, the model expects "
                f"{tuple(variable.shape)}."
            )
    for path, variable in targets.items():
        variable.assign(tensors[path].astype(variable.dtype))


def load_adapter(directory, preset=None, dtype=None):
    """Rebuild an `AdapterTextClassifier` from an adapter folder."""
    from keras_adapters.text_classifier import AdapterTextClassifier

    config = read_adapter_config(directory)
    tensors = read_adapter_weights(directory, config)
    task = config["task"]
    model = AdapterTextClassifier.from_preset(
        preset if preset is not None else config["backbone"]["preset"],
        num_classes=task["num_classes"],
        adapter=config["adapter"],
        sequence_length=task["sequence_length"] or 128,
        dtype=dtype,
        multi_label=task["multi_label"],
        pooling=task["pooling"],
        dropout=task["dropout"],
        class_names=task["class_names"],
    )
    check_backbone(model, config, str(directory))
    assign_adapter_weights(model, tensors, str(directory))
    return model
