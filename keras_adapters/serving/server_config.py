"""What TF Serving reads beside the models: `--model_config_file=DIR/models.config`
and `--batching_parameters_file=DIR/batching.config`.

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

`batching.config` is a `BatchingParameters` text proto (for
`--enable_batching`), written once with values measured for these models
on a CPU and explained in the file's comments; an operator's later edits
are kept. Its message is not in the `tensorflow-serving-api` wheel, so it is
built here from the fields of TF Serving's `session_bundle_config.proto`
(`batching_parameters`) to parse and check the file.
"""

import functools
import os
import re
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory
from google.protobuf import text_format
from google.protobuf import wrappers_pb2
from tensorflow_serving.config import model_server_config_pb2

from keras_adapters.io.adapter_folder import atomic_write

MODELS_FILE = "models.config"
BATCHING_FILE = "batching.config"
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
    """Raise the error `add_version` (or a malformed `batching.config`) would,
    before anything is exported."""
    path = os.path.join(config_dir, MODELS_FILE)
    _entry(read_model_config(path), path, name, base_path, labels)
    read_batching_config(os.path.join(config_dir, BATCHING_FILE))


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


def move_label(config_dir, name, label, version=None):
    """Point version label `label` of model `name` in `config_dir/models.config`
    at `version` (default: the newest version the file loads), e.g. promote a
    canary to `stable`.

    The version must be one the file already lists; TF Serving moreover
    moves a label only to a version it is serving (AVAILABLE), and rejects
    the whole re-read file otherwise, so call this once the version serves.
    The versions loaded become the labelled ones and the newest, so a
    version no label names any more is unloaded.

    Returns:
        (the config file's path, the version the label now points at).
    """
    path = os.path.join(config_dir, MODELS_FILE)
    config = read_model_config(path)
    entries = {entry.name: entry for entry in config.model_config_list.config}
    if name not in entries:
        raise ValueError(f"{path} serves no model {name!r} (it serves: {', '.join(entries) or 'none'}).")
    if not LABEL.fullmatch(label):
        raise ValueError(f"A version label is a letter, then letters, digits, '_' or '-'; got {label!r}.")
    entry = entries[name]
    loaded = sorted(entry.model_version_policy.specific.versions)
    version = loaded[-1] if version is None and loaded else version
    if version not in loaded:
        raise ValueError(
            f"Version {version} of {name!r} is not one {path} loads ({loaded or 'none listed'}): TF Serving moves "
            "a label only to a version it has loaded. Export it with --serving-config first."
        )
    entry.version_labels[label] = int(version)
    entry.model_version_policy.specific.ClearField("versions")
    entry.model_version_policy.specific.versions.extend(sorted(set(entry.version_labels.values()) | {loaded[-1]}))
    text = text_format.MessageToString(config)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path, int(version)


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


# ------------------------------------------------------------ batching.config
_FIELD = descriptor_pb2.FieldDescriptorProto
_INT64, _STRING, _BOOL = (f".google.protobuf.{w}" for w in ("Int64Value", "StringValue", "BoolValue"))
#: TF Serving's `BatchingParameters` fields (session_bundle_config.proto):
#: (name, number, wrapper message, or the plain type of a field without one).
_BATCHING_FIELDS = (
    ("max_batch_size", 1, _INT64),
    ("batch_timeout_micros", 2, _INT64),
    ("max_enqueued_batches", 3, _INT64),
    ("num_batch_threads", 4, _INT64),
    ("thread_pool_name", 5, _STRING),
    ("allowed_batch_sizes", 6, _FIELD.TYPE_INT64),
    ("pad_variable_length_inputs", 7, _FIELD.TYPE_BOOL),
    ("enable_large_batch_splitting", 8, _BOOL),
    ("max_execution_batch_size", 9, _INT64),
)


@functools.cache
def batching_parameters_class():
    """The `tensorflow.serving.BatchingParameters` message class (in a pool of its own)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="keras_adapters/batching_parameters.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    for name, number, kind in _BATCHING_FIELDS:
        if isinstance(kind, str):
            message.field.add(name=name, number=number, label=_FIELD.LABEL_OPTIONAL, type=_FIELD.TYPE_MESSAGE,
                              type_name=kind)
        else:
            label = _FIELD.LABEL_REPEATED if kind == _FIELD.TYPE_INT64 else _FIELD.LABEL_OPTIONAL
            message.field.add(name=name, number=number, label=label, type=kind)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def read_batching_config(path):
    """The `BatchingParameters` in `path` (`None` when there is no file)."""
    if not os.path.isfile(path):
        return None
    params = batching_parameters_class()()
    try:
        text_format.Parse(Path(path).read_text(), params)
    except text_format.ParseError as e:
        raise ValueError(
            f"{path} is not a TF Serving batching config (BatchingParameters text proto): {e}. Fix it, or delete "
            "it and export again to get the measured defaults."
        ) from e
    if params.HasField("max_batch_size") and params.max_batch_size.value < 1:
        raise ValueError(f"{path}: max_batch_size must be at least 1.")
    return params


def write_batching_config(config_dir):
    """Write `config_dir/batching.config` unless there is one (kept as the
    operator left it). Returns (its path, whether it was written now)."""
    path = os.path.join(config_dir, BATCHING_FILE)
    if read_batching_config(path) is not None:
        return path, False
    os.makedirs(config_dir, exist_ok=True)
    text = batching_text(os.cpu_count() or 1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path, True


#: Measured (BENCHMARKS.md "Small batches"): a bf16 MiniLM SavedModel on one
#: intra-op thread runs a batch of 16 rows of 128 tokens in about 297 ms.
BATCH_OF_16_MS = 297


def batching_text(cores):
    """The measured defaults, each with its reason, for a CPU server of `cores` cores."""
    queue = max(2, round(cores * 1000 / BATCH_OF_16_MS))
    return BATCHING_TEMPLATE.format(cores=cores, queue=queue, batch_ms=BATCH_OF_16_MS)


BATCHING_TEMPLATE = """\
# TF Serving batching for keras-adapters SavedModels on a CPU server:
#   tensorflow_model_server --enable_batching --batching_parameters_file=THIS_FILE \\
#       --tensorflow_intra_op_parallelism=1 --tensorflow_inter_op_parallelism={cores} ...
# Written by `keras-adapters export --serving-config`; later exports keep your edits.
# Values measured on a 2-core AVX512-BF16 CPU with MiniLM (BENCHMARKS.md, "Small batches").

# Rows per batch. Per row, a bf16 batch costs 18.1 ms at 1 row, 13.0 at 4, 11.1 at 8,
# 10.5 at 16 and 10.6 at 32 (128 tokens): past 16 a bigger batch only waits longer.
max_batch_size {{ value: 16 }}

# 0: a request that finds a batch thread idle runs at once (no added latency when traffic is
# light); requests that arrive while every thread is busy queue and go together. TF Serving's
# advice for CPUs is to start here; raise it (1000-10000) only to trade latency for throughput.
batch_timeout_micros {{ value: 0 }}

# One batch per core, each on one thread (--tensorflow_intra_op_parallelism=1): two batches of
# 16 side by side on one thread each answered 32 rows in 311 ms, one after the other on two
# threads each in 354 ms (1.14x the throughput; benchmarks/batch_threads.py). The cores of the
# machine that exported this file: set it to the server's.
num_batch_threads {{ value: {cores} }}

# At most about one second of work waits ({queue} batches of 16 at ~{batch_ms} ms on one core):
# beyond that TF Serving answers UNAVAILABLE at once instead of letting every answer wait.
max_enqueued_batches {{ value: {queue} }}

# false: TF Serving pads a shorter request's tensors with their first value (a [CLS] id and
# a padding_mask of 1), which changes the answers of the *_token_ids signatures. The text
# signatures need no padding (one string per row); token-id clients send rows of one length.
pad_variable_length_inputs: false
"""
