"""TF Serving's model config file: `--model_config_file=DIR/models.config`.

A `ModelServerConfig` text proto (`tensorflow-serving-api`) listing the
models one server serves: for each, its name, base path, the versions to
load (a `specific` version policy) and version labels (`stable`, `canary`:
clients call `/v1/models/NAME/labels/stable:predict`). Each export updates
its model's entry and leaves the other models' as they are.

Which versions load: the ones a label points to, and the one just exported,
so that an unlabelled old version is unloaded when nothing points to it.
Paths are absolute paths of this machine: in a container, mount the models
at the same path. Two exports updating one file at the same moment are not
guarded against (the last one's write wins).
"""

import os
import re
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from keras_adapters.io.adapter_folder import atomic_write

MODELS_FILE = "models.config"
LABEL = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def read_model_config(path):
    """The `ModelServerConfig` in `path` (empty when there is no file)."""
    config = model_server_config_pb2.ModelServerConfig()
    if os.path.isfile(path):
        try:
            text_format.Parse(Path(path).read_text(), config)
        except text_format.ParseError as e:
            raise ValueError(f"{path} is not a TF Serving model config (ModelServerConfig text proto): {e}") from e
    return config


def check_version(config_dir, name, base_path, labels=()):
    """Raise the error `add_version` would, before anything is exported."""
    path = os.path.join(config_dir, MODELS_FILE)
    _entry(read_model_config(path), path, name, base_path, labels)


def add_version(config_dir, name, base_path, version, labels=()):
    """Serve `version` of model `name` (stored under `base_path`) from
    `config_dir/models.config`, with `labels` (new ones) pointing at it.

    The model's versions become the labelled ones and `version` (a
    `specific` policy, replacing a `latest` or `all` one written by hand).
    A label that already points at a version is refused: a TF Serving that
    re-reads the file moves a label only to a version it has loaded, and
    until then applies no change of the file at all.

    Returns:
        The config file's path.
    """
    path = os.path.join(config_dir, MODELS_FILE)
    config = read_model_config(path)
    entry = _entry(config, path, name, base_path, labels)
    for label in labels:
        entry.version_labels[label] = int(version)
    versions = sorted(set(entry.version_labels.values()) | {int(version)})
    entry.model_version_policy.specific.ClearField("versions")
    entry.model_version_policy.specific.versions.extend(versions)
    os.makedirs(config_dir, exist_ok=True)
    text = text_format.MessageToString(config)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path


def _entry(config, path, name, base_path, labels):
    bad = [label for label in labels if not LABEL.fullmatch(label)]
    if bad:
        raise ValueError(f"A version label is a letter, then letters, digits, '_' or '-'; got {bad}.")
    base_path = os.path.abspath(base_path)
    for entry in config.model_config_list.config:
        if entry.name != name:
            continue
        if os.path.realpath(entry.base_path) != os.path.realpath(base_path):
            raise ValueError(
                f"Model {name!r} is served from {entry.base_path} in {path}, not {base_path}: export to that "
                "folder, or give this model another name (its folder's name)."
            )
        taken = {label: entry.version_labels[label] for label in labels if label in entry.version_labels}
        if taken:
            raise ValueError(
                f"Label(s) {taken} of {name!r} already point at a version in {path}. TF Serving re-reading the "
                "file refuses to move a label to a version it has not loaded (and then applies no change of "
                "the file): export under a new label (e.g. canary), and once it serves, change the old label's "
                "version in the file (version_labels)."
            )
        return entry
    return config.model_config_list.config.add(name=name, base_path=base_path, model_platform="tensorflow")
