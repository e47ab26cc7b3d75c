"""The adapter folder: round trips and every way it can be wrong."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import LABELS
from conftest import TEXTS

import keras_adapters as ka
from keras_adapters.io import adapter_folder as adapter_io


@pytest.fixture(scope="module")
def trained(tiny_preset, tmp_path_factory):
    keras.utils.set_random_seed(4)
    model = ka.AdapterTextClassifier.from_preset(
        tiny_preset,
        num_classes=4,
        method=ka.LoRAConfig(rank=4, target_modules=("query", "key", "value")),
        sequence_length=16,
        class_names=["sport", "business", "tech", "politics"],
    )
    model.fit(TEXTS, LABELS, epochs=2, batch_size=4, verbose=0)
    folder = tmp_path_factory.mktemp("adapter") / "run" / "adapter"
    model.save_adapter(str(folder))
    return model, str(folder)


def test_folder_is_small_and_described(trained):
    model, folder = trained
    assert sorted(os.listdir(folder)) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads(open(os.path.join(folder, "adapter_config.json")).read())
    assert config["method"]["method"] == "lora" and config["method"]["rank"] == 4
    assert config["name"] == "default" and config["format_version"] == 2
    assert config["library_version"] == ka.__version__
    assert config["task"]["class_names"] == ["sport", "business", "tech", "politics"]
    assert config["backbone"]["architecture"]["hidden_dim"] == 16
    assert len(config["backbone"]["weights_sha256"]) == 64
    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(folder, "adapter_model.safetensors"))
    assert len(tensors) == len(model.trainable_weights) == 2 * 3 * 2 + 2
    assert "transformer_layer_1/self_attention_layer/key/lora_b" in tensors
    assert "logits/kernel" in tensors
    # Only what trained: far fewer values than the backbone holds.
    assert sum(t.size for t in tensors.values()) == ka.parameter_report(model)["trainable"]


def test_from_adapter_reproduces_predictions_exactly(trained):
    model, folder = trained
    again = ka.AdapterTextClassifier.from_adapter(folder)
    np.testing.assert_array_equal(again.predict(TEXTS, verbose=0), model.predict(TEXTS, verbose=0))
    assert again.class_names == model.class_names
    assert again.adapter_config() == model.adapter_config()


DORA = {"method": "lora", "use_dora": True, "target_modules": ["query", "feedforward_output_dense"]}


# The methods whose units are made of the same parts as others' run with `-m slow`.
SLOW = ["bitfit", "parallel", "compacter", "mam"]


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "ia3", "full", "head", DORA, "prompt", "prefix",
                                    *[pytest.param(m, marks=pytest.mark.slow) for m in SLOW]],
                         ids=["houlsby", "pfeiffer", "ia3", "full", "head", "dora", "prompt", "prefix", *SLOW])
def test_every_method_round_trips(tiny_preset, tmp_path, method):
    keras.utils.set_random_seed(5)
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=4, method=method, sequence_length=16)
    model.fit(TEXTS, LABELS, epochs=1, batch_size=4, verbose=0)
    model.save_adapter(str(tmp_path / "a"))
    again = ka.AdapterTextClassifier.from_adapter(str(tmp_path / "a"))
    np.testing.assert_array_equal(again.predict(TEXTS, verbose=0), model.predict(TEXTS, verbose=0))


def test_a_reparameterized_prefix_is_saved_as_plain_prefixes(tiny_preset, tmp_path):
    import json

    from safetensors.numpy import load_file

    config = ka.PrefixConfig(prefix_length=3, bottleneck_size=8)
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=4, method=config, sequence_length=16)
    assert any("encoder" in w.path for w in model.trainable_weights)  # trains through the MLP
    model.save_adapter(str(tmp_path / "a"))
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["method"]
    assert saved["reparameterize"] is False
    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    prefixes = sorted(k for k in tensors if not k.startswith("logits/"))
    assert len(prefixes) == 2 * 2 and all(k.endswith(("key/prefix", "value/prefix")) for k in prefixes)
    assert all(tensors[k].shape == (3, 2, 8) for k in prefixes)


def _copy(folder, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_truncated_weights_file_is_refused(trained, tmp_path):
    folder = _copy(trained[1], tmp_path)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ka.AdapterFormatError, match="truncated, corrupt"):
        ka.AdapterTextClassifier.from_adapter(str(folder))


def test_flipped_byte_is_refused(trained, tmp_path):
    folder = _copy(trained[1], tmp_path)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ka.AdapterFormatError, match="sha256"):
        ka.AdapterTextClassifier.from_adapter(str(folder))


def test_unknown_method_is_refused(trained, tmp_path):
    folder = _copy(trained[1], tmp_path)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["method"]["method"] = "reft"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Unknown adapter method 'reft'"):
        ka.AdapterTextClassifier.from_adapter(str(folder))


def test_missing_and_malformed_folders(tmp_path):
    with pytest.raises(ka.AdapterFormatError, match="does not exist"):
        ka.AdapterTextClassifier.from_adapter(str(tmp_path / "nope"))
    with pytest.raises(ka.AdapterFormatError, match="has no adapter_config.json"):
        ka.AdapterTextClassifier.from_adapter(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{not json")
    with pytest.raises(ka.AdapterFormatError, match="not valid JSON"):
        ka.AdapterTextClassifier.from_adapter(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text('{"format": "keras-adapters/adapter", "format_version": 99}')
    with pytest.raises(ka.AdapterFormatError, match="Upgrade keras-adapters"):
        ka.AdapterTextClassifier.from_adapter(str(tmp_path))


def _other_preset(tmp_path, **overrides):
    from conftest import write_tiny_preset

    return write_tiny_preset(tmp_path / "other", seed=9, **overrides)


def test_adapter_for_another_architecture_is_refused(trained, tmp_path):
    other = _other_preset(tmp_path, hidden_dim=32, intermediate_dim=64)
    with pytest.raises(ka.AdapterFormatError, match=r"another backbone \(hidden_dim: adapter 16 vs backbone 32"):
        ka.AdapterTextClassifier.from_adapter(trained[1], preset=other)


def test_adapter_for_another_checkpoint_is_refused(trained, tmp_path):
    other = _other_preset(tmp_path)  # same architecture, other weights
    with pytest.raises(ka.AdapterFormatError, match="different checkpoint"):
        ka.AdapterTextClassifier.from_adapter(trained[1], preset=other)


def _rewrite(folder, tmp_path, edit):
    """A copy of the folder with its tensors edited (and a valid checksum)."""
    from safetensors.numpy import load_file

    config = adapter_io.read_config(folder)
    tensors = load_file(os.path.join(folder, adapter_io.WEIGHTS_FILE))
    edit(tensors)
    config.pop("weights")
    return adapter_io.write_folder(str(tmp_path / "edited"), config, tensors)


def test_weights_that_do_not_fit_are_refused(trained, tmp_path):
    _, folder = trained
    missing = _rewrite(folder, tmp_path / "a", lambda t: t.pop("logits/bias"))
    with pytest.raises(ka.AdapterFormatError, match=r"missing \['logits/bias'\]"):
        ka.AdapterTextClassifier.from_adapter(missing)
    wrong = _rewrite(folder, tmp_path / "b", lambda t: t.update({"logits/bias": np.zeros(5, "float32")}))
    with pytest.raises(ka.AdapterFormatError, match="has shape"):
        ka.AdapterTextClassifier.from_adapter(wrong)
    extra = _rewrite(folder, tmp_path / "c", lambda t: t.update({"logits/extra": np.zeros(5, "float32")}))
    with pytest.raises(ka.AdapterFormatError, match=r"unexpected \['logits/extra'\]"):
        ka.AdapterTextClassifier.from_adapter(extra)


class _Payload:
    """Unpickling this runs code: it creates the file `path`."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _with_weights_bytes(folder, tmp_path, data):
    """A copy whose weights file holds `data`, with a matching sha256 in its config."""
    import hashlib

    copy = _copy(folder, tmp_path)
    (copy / adapter_io.WEIGHTS_FILE).write_bytes(data)
    path = copy / "adapter_config.json"
    config = json.loads(path.read_text())
    config["weights"]["sha256"] = hashlib.sha256(data).hexdigest()
    path.write_text(json.dumps(config))
    return copy


def test_loading_never_executes_code(trained, tmp_path):
    import pickle

    marker = tmp_path / "executed"
    folder = _with_weights_bytes(trained[1], tmp_path, pickle.dumps(_Payload(str(marker))))
    with pytest.raises(ka.AdapterFormatError, match="adapter_model.safetensors is not a readable safetensors file"):
        ka.AdapterTextClassifier.from_adapter(str(folder))
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(str(marker))))  # the payload is live: unpickling it would have run it
    assert marker.exists()


def test_missing_weights_and_weights_outside_the_folder_are_refused(trained, tmp_path):
    folder = _copy(trained[1], tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(folder / adapter_io.WEIGHTS_FILE, outside)
    with pytest.raises(ka.AdapterFormatError, match=r"adapter_model.safetensors is missing"):
        ka.AdapterTextClassifier.from_adapter(str(folder))
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    for name in (str(outside), "../elsewhere.safetensors"):
        config["weights"]["file"] = name
        path.write_text(json.dumps(config))
        with pytest.raises(ka.AdapterFormatError, match="adapter folders never point elsewhere"):
            ka.AdapterTextClassifier.from_adapter(str(folder))


def test_saved_files_are_readable_by_a_serving_account(trained):
    folder = trained[1]
    assert os.stat(folder).st_mode & 0o777 == 0o755
    for name in os.listdir(folder):
        assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o644, name


_SAVE_REPEATEDLY = """
import sys
import numpy as np
from keras_adapters.io import adapter_folder as adapter_io

folder, rounds = sys.argv[1], int(sys.argv[2])
config = {"name": "x", "method": {"method": "lora"}, "backbone": {"preset": "p"}, "task": {}}
for i in range(rounds):
    tensors = {"w": np.full((64, 64), float(i % 2), "float32")}
    adapter_io.replace_folder(folder, lambda tmp: adapter_io.write_folder(tmp, config, tensors))
"""


def test_reading_while_another_process_saves_never_fails(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "adapter"
    config = {"name": "x", "method": {"method": "lora"}, "backbone": {"preset": "p"}, "task": {}}
    adapter_io.replace_folder(folder, lambda tmp: adapter_io.write_folder(tmp, config, {"w": np.zeros((64, 64))}))
    writer = subprocess.Popen(
        [sys.executable, "-c", _SAVE_REPEATEDLY, str(folder), "600"], stderr=subprocess.PIPE, text=True
    )
    reads = 0
    while writer.poll() is None:
        config_read, tensors = adapter_io.read_folder(folder)  # raises on a false checksum mismatch
        assert np.unique(tensors["w"]).size == 1 and reads >= 0
        reads += 1
    assert writer.returncode == 0, writer.stderr.read()  # a reader never broke a save
    assert reads > 50
    assert sorted(os.listdir(tmp_path)) == ["adapter"]


def test_a_folder_left_between_the_two_renames_is_read_and_then_recovered_by_the_writer(trained, tmp_path):
    model, folder = trained
    copy = _copy(folder, tmp_path)
    old = tmp_path / ".copy.old"
    os.replace(copy, old)  # a save killed between its renames
    again = ka.AdapterTextClassifier.from_adapter(str(copy))
    np.testing.assert_allclose(again.predict(TEXTS, verbose=0), model.predict(TEXTS, verbose=0), atol=1e-6)
    assert not copy.exists() and old.is_dir()  # reading changed nothing
    again.save_adapter(str(copy))
    assert copy.is_dir() and not old.exists()


def test_another_tokenizer_is_refused(trained, tmp_path):
    import shutil

    preset = tmp_path / "cased"
    shutil.copytree(trained[0].preset, preset)
    for name, tokenizer in (("tokenizer.json", lambda c: c), ("preprocessor.json", lambda c: c["config"]["tokenizer"])):
        config = json.loads((preset / name).read_text())
        tokenizer(config)["config"]["lowercase"] = False
        (preset / name).write_text(json.dumps(config))
    message = r"another tokenizer \(lowercase: adapter True vs this model False\)"
    with pytest.raises(ka.AdapterFormatError, match=message):
        ka.AdapterTextClassifier.from_adapter(trained[1], preset=str(preset))


def test_non_finite_weights_are_refused(trained, tmp_path):
    def poison(tensors):
        tensors["logits/bias"] = tensors["logits/bias"].copy()
        tensors["logits/bias"][1] = np.nan

    folder = _rewrite(trained[1], tmp_path, poison)
    with pytest.raises(ka.AdapterFormatError, match=r"NaN or infinite values in \['logits/bias'\]"):
        ka.AdapterTextClassifier.from_adapter(folder)


@pytest.mark.parametrize("version", [2.0, -1, 0, "2", True, None])
def test_format_versions_no_release_writes_are_named(trained, tmp_path, version):
    folder = _copy(trained[1], tmp_path)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["format_version"] = version
    path.write_text(json.dumps(config))
    with pytest.raises(ka.AdapterFormatError, match=rf"format_version {version!r}, which no keras-adapters writes"):
        ka.AdapterTextClassifier.from_adapter(str(folder))


def test_unknown_keys_warn_once_nested_ones_included(trained, tmp_path):
    import warnings

    folder = _copy(trained[1], tmp_path)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["comments"] = "from the future"
    config["task"]["label_smoothing"] = 0.1
    config["backbone"]["revision"] = "abc"
    path.write_text(json.dumps(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ka.AdapterTextClassifier.from_adapter(str(folder))
    messages = [str(w.message) for w in caught if "does not know" in str(w.message)]
    assert len(messages) == 1, messages
    assert "['backbone.revision', 'comments', 'task.label_smoothing']" in messages[0]


def test_a_weights_file_linking_outside_the_folder_is_refused(trained, tmp_path):
    folder = _copy(trained[1], tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    os.replace(folder / adapter_io.WEIGHTS_FILE, outside)
    os.symlink(outside, folder / adapter_io.WEIGHTS_FILE)
    with pytest.raises(ka.AdapterFormatError, match="is a link to .*elsewhere.safetensors, outside the adapter folder"):
        ka.AdapterTextClassifier.from_adapter(str(folder))


@pytest.mark.parametrize("length", [100000, 2, "16"])
def test_a_sequence_length_beyond_the_backbone_is_refused(trained, tmp_path, length):
    folder = _copy(trained[1], tmp_path)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["task"]["sequence_length"] = length
    path.write_text(json.dumps(config))
    with pytest.raises(ka.AdapterFormatError, match=rf"task.sequence_length {length!r} does not fit the backbone"):
        ka.AdapterTextClassifier.from_adapter(str(folder))
