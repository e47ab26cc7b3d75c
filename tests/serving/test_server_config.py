"""What TF Serving reads beside the versions: the next version folder for each
export, and `models.config` (parsed here with tensorflow-serving-api's own
`ModelServerConfig`)."""

import hashlib
import os

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
