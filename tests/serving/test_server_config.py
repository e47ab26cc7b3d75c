"""What TF Serving reads beside the versions: the next version folder for each
export, and `models.config` (parsed here with tensorflow-serving-api's own
`ModelServerConfig`)."""

import hashlib
import os

import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from keras_adapters import cli
from keras_adapters.serving import server_config


def parsed(config_dir):
    config = model_server_config_pb2.ModelServerConfig()
    text_format.Parse((config_dir / "models.config").read_text(), config)
    return {c.name: c for c in config.model_config_list.config}


def export(run, out, *extra):
    return cli.main(["export", str(run), "--format", "saved_model", "-o", str(out), "--no-warmup", *map(str, extra)])


def digest(folder):
    return hashlib.sha256((folder / "saved_model.pb").read_bytes()).hexdigest()


def test_each_export_is_a_new_version_named_in_the_model_config(token_run, tmp_path, capsys):
    base, config = tmp_path / "models" / "tagger", tmp_path / "config"
    assert export(token_run[0], base, "--serving-config", config, "--label", "stable") == 0
    assert f"TF Serving model config: {config / 'models.config'}" in capsys.readouterr().out
    first = digest(base / "1")
    assert export(token_run[0], base, "--serving-config", config, "--label", "canary") == 0
    entry = parsed(config)["tagger"]
    assert entry.base_path == str(base) and entry.model_platform == "tensorflow"
    assert list(entry.model_version_policy.specific.versions) == [1, 2]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    # A polling TF Serving refuses to move a label to a version it has not loaded: so do we, before exporting.
    assert export(token_run[0], base, "--serving-config", config, "--label", "stable") == 2
    assert "already point at a version" in capsys.readouterr().err and not (base / "3").exists()
    assert export(token_run[0], base, "--serving-config", config) == 0
    assert export(token_run[0], base, "--serving-config", config) == 0
    entry = parsed(config)["tagger"]
    # Version 3 has no label and is not the newest: it is not loaded any more; no folder was touched.
    assert list(entry.model_version_policy.specific.versions) == [1, 2, 4]
    assert dict(entry.version_labels) == {"stable": 1, "canary": 2}
    assert digest(base / "1") == first
    # TF Serving's layout: <base>/<integer version>/saved_model.pb for every version it is told to load.
    assert all((base / str(v) / "saved_model.pb").is_file() for v in entry.model_version_policy.specific.versions)
    assert sorted(os.listdir(base)) == ["1", "2", "3", "4"]
    # Another model joins the same file; the first one's entry stays as it was.
    assert export(token_run[0], tmp_path / "models" / "other", "--serving-config", config) == 0
    models = parsed(config)
    assert list(models) == ["tagger", "other"] and dict(models["tagger"].version_labels) == {"stable": 1, "canary": 2}
    assert list(models["other"].model_version_policy.specific.versions) == [1] and not models["other"].version_labels


def test_promote_moves_a_label_to_a_loaded_version_and_unloads_what_no_label_names(token_run, tmp_path, capsys):
    base, config = tmp_path / "models" / "tagger", tmp_path / "config"
    for label in ("stable", "canary"):
        assert export(token_run[0], base, "--serving-config", config, "--label", label) == 0
    assert export(token_run[0], base, "--serving-config", config) == 0  # version 3, unlabelled
    promote = lambda *a: cli.main(["promote", "tagger", "--serving-config", str(config), *map(str, a)])  # noqa: E731
    before = (config / "models.config").read_text()
    # Refusals change nothing.
    assert promote("--label", "stable", "--version", "5") == 2
    assert "Version 5 of 'tagger' is not one" in capsys.readouterr().err
    assert cli.main(["promote", "news", "--serving-config", str(config), "--label", "stable"]) == 2
    assert "serves no model 'news' (it serves: tagger)" in capsys.readouterr().err
    assert promote("--label", "2nd", "--version", "2") == 2
    assert (config / "models.config").read_text() == before
    assert promote("--label", "stable", "--version", "2") == 0
    assert "tagger: label stable -> version 2" in capsys.readouterr().out
    entry = parsed(config)["tagger"]
    # Version 1 lost its only label: unloaded; 3 is the newest: kept.
    assert dict(entry.version_labels) == {"stable": 2, "canary": 2}
    assert list(entry.model_version_policy.specific.versions) == [2, 3]
    assert promote("--label", "canary") == 0  # the newest loaded version
    entry = parsed(config)["tagger"]
    assert dict(entry.version_labels) == {"stable": 2, "canary": 3}
    assert list(entry.model_version_policy.specific.versions) == [2, 3]
    assert sorted(os.listdir(base)) == ["1", "2", "3"]  # no version folder touched


def test_a_bad_config_request_is_refused_before_anything_is_exported(token_run, tmp_path, capsys):
    base, config = tmp_path / "m" / "tagger", tmp_path / "config"
    assert export(token_run[0], base, "--label", "stable") == 2
    assert "pass --serving-config DIR with --label" in capsys.readouterr().err
    assert export(token_run[0], base, "--serving-config", config, "--label", "1st") == 2
    assert "A version label is a letter" in capsys.readouterr().err
    config.mkdir()
    (config / "models.config").write_text('model_config_list { config { name: "tagger" base_path: "/elsewhere" } }')
    assert export(token_run[0], base, "--serving-config", config) == 2
    assert "served from /elsewhere in" in capsys.readouterr().err
    (config / "models.config").write_text("model_config_list { config { name: ")
    assert export(token_run[0], base, "--serving-config", config) == 2
    assert "is not a TF Serving model config" in capsys.readouterr().err
    assert not base.exists()  # no version was written for any of them
    assert cli.main(["export", str(token_run[0]), "--format", "tflite", "-o", str(tmp_path / "lite"),
                     "--serving-config", str(config)]) == 2
    assert "--serving-config: for --format saved_model" in capsys.readouterr().err
    with pytest.raises(ValueError, match="letter"):
        server_config.add_version(tmp_path / "fresh", "x", base, 1, ["has space"])


def test_batching_config_is_written_once_and_then_left_to_the_operator(token_run, tmp_path, capsys):
    base, config = tmp_path / "models" / "tagger", tmp_path / "config"
    assert export(token_run[0], base, "--serving-config", config) == 0
    assert f"batching parameters: {config / 'batching.config'}" in capsys.readouterr().out
    # Parsed as TF Serving parses --batching_parameters_file: a BatchingParameters text proto.
    params = server_config.read_batching_config(config / "batching.config")
    assert params.max_batch_size.value == 16 and params.HasField("batch_timeout_micros")
    assert params.batch_timeout_micros.value == 0 and params.num_batch_threads.value == os.cpu_count()
    assert params.max_enqueued_batches.value >= 2 and not params.pad_variable_length_inputs
    assert not params.allowed_batch_sizes  # no padding of batches: the graphs take any batch size
    edited = "max_batch_size { value: 8 }\nbatch_timeout_micros { value: 2000 }\n"
    (config / "batching.config").write_text(edited)
    assert export(token_run[0], base, "--serving-config", config) == 0
    assert (config / "batching.config").read_text() == edited  # an operator's tuning is kept
    (config / "batching.config").write_text("max_batch_size { value: 8 ")
    assert export(token_run[0], base, "--serving-config", config) == 2
    err = capsys.readouterr().err
    assert "batching.config is not a TF Serving batching config" in err and "delete it" in err
    assert sorted(os.listdir(base)) == ["1", "2"]  # refused before exporting
    (config / "batching.config").write_text("max_batch_size { value: 0 }")
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        server_config.read_batching_config(config / "batching.config")


def test_batched_text_requests_answer_as_separate_ones_and_token_padding_would_not(tiny_preset, tmp_path):
    """TF Serving's batching concatenates requests along the batch axis and,
    with pad_variable_length_inputs, pads shorter tensors with their first
    value. The text signature answers a concatenated batch as its requests
    one by one; token ids padded TF Serving's way get other answers, which is
    why batching.config leaves that padding off."""
    import tensorflow as tf

    import keras_adapters as ka
    from conftest import TEXTS
    from conftest import randomize_adapter_weights

    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=4, method="houlsby", sequence_length=16)
    randomize_adapter_weights(model.backbone)
    rng = np.random.default_rng(0)
    for w in model.output_head.weights:  # far from uniform answers, so that a changed input shows
        w.assign(rng.normal(0, 2.0, w.shape).astype("float32"))
    loaded = tf.saved_model.load(ka.export_saved_model(model, str(tmp_path / "m")))
    texts = [TEXTS[2], TEXTS[0] + " " + TEXTS[5], TEXTS[6]]  # 4, 10 and 4 words
    text = loaded.signatures["serving_default"]
    alone = [text(text=tf.constant([t]))["probabilities"].numpy()[0] for t in texts]
    together = text(text=tf.constant(texts))["probabilities"].numpy()
    np.testing.assert_allclose(together, alone, atol=1e-5)

    tokens = model.preprocessor(tf.constant(texts))
    lengths = tokens["padding_mask"].numpy().sum(axis=1)
    row = int(np.argmin(lengths))
    short = {k: tf.cast(v[row: row + 1, : lengths[row]], tf.int32) for k, v in tokens.items()}
    serve = loaded.signatures["serve_token_ids"]
    exact = serve(**short)["probabilities"].numpy()
    width = 16  # batched with a request of the full sequence length
    zeros = {k: tf.pad(v, [[0, 0], [0, width - lengths[row]]]) for k, v in short.items()}
    first_value = {k: tf.pad(v, [[0, 0], [0, width - lengths[row]]], constant_values=v[0, 0]) for k, v in short.items()}
    rounding = np.abs(serve(**zeros)["probabilities"].numpy() - exact).max()
    changed = np.abs(serve(**first_value)["probabilities"].numpy() - exact).max()
    assert rounding < 1e-5 and changed > 30 * max(rounding, 1e-6)
