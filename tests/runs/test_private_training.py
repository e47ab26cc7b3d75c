"""`keras-adapters train --dp-epsilon`: the run folder states its guarantee and keeps no private text."""

import json

import keras
import pytest
from conftest import write_class_folders
from conftest import write_squad

import keras_adapters as ka
from keras_adapters import cli
from keras_adapters.core.privacy import spent_epsilon
from keras_adapters.runs import folder as runs


def train(data, run, preset, *extra):
    return cli.main([
        "train", str(data), "--output", str(run), "--backbone", preset, "--method", "lora", "--epochs", "2",
        "--batch-size", "8", "--sequence-length", "16", "--precision", "float32", "--quiet", *extra,
    ])


def test_a_private_run_records_its_guarantee_and_keeps_no_private_text(tiny_preset, tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=16)
    run = tmp_path / "run"
    assert train(data, run, tiny_preset, "--dp-epsilon", "3", "--dp-delta", "1e-3") == 0
    printed = capsys.readouterr().out
    assert "adapter of the last epoch (2)" in printed and "privacy: (3, 0.001)-DP per example" in printed
    report = json.loads((run / "metrics.json").read_text())["privacy"]
    assert report == json.loads((run / "adapter" / "adapter_config.json").read_text())["privacy"]
    assert report["steps"] == 12 and report["sampling_rate"] == pytest.approx(8 / 48)
    assert report["epsilon"] == pytest.approx(
        spent_epsilon(report["noise_multiplier"], 8 / 48, 12, 1e-3), rel=1e-12
    ) and 2.97 < report["epsilon"] <= 3.0
    history = json.loads((run / "history.json").read_text())
    assert history["epsilon"][-1] == report["epsilon"] and "val_loss" not in history
    config = json.loads((run / "train_config.json").read_text())
    assert config["privacy"]["epsilon"] == 3.0 and config["num_validation_examples"] is None
    assert not (run / runs.EXAMPLES).exists()
    inputs, why = runs.example_inputs(run)  # export's warm-up never samples the private data
    assert inputs is None and "differential privacy" in why
    assert cli.main(["evaluate", str(run), str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["privacy"] == report


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--validation-split", "0.2"], "a validation split would choose the adapter by private examples"),
        (["--early-stopping", "2"], "--early-stopping without --validation-data (it would stop on a metric"),
        (["--bucket-by-length"], "--bucket-by-length"),
        (["--dp-delta", "0.05"], "not below 1/N"),
        (["--dp-epsilon", "-1"], "epsilon must be a positive number"),
    ],
)
def test_what_breaks_a_private_run_is_refused_before_training(tiny_preset, tmp_path, capsys, extra, words):
    data = write_class_folders(tmp_path / "data", per_class=8)
    options = ["--dp-epsilon", "3", *extra] if "--dp-epsilon" not in extra else extra
    assert train(data, tmp_path / "run", tiny_preset, *options) != 0
    assert words in capsys.readouterr().err
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_public_validation_data_chooses_the_epoch_and_the_adapter_states_the_whole_runs_guarantee(
    tiny_preset, tmp_path
):
    class FirstEpochBest(keras.callbacks.Callback):  # runs before the run's own callbacks
        def on_epoch_end(self, epoch, logs=None):
            logs["val_accuracy"] = 1.0 if epoch == 0 else 0.0

    data = write_class_folders(tmp_path / "data", per_class=16)
    public = write_class_folders(tmp_path / "public", per_class=3, seed=1)
    run = tmp_path / "run"
    _, summary = ka.train_classifier(
        data, run, preset=tiny_preset, method="lora", epochs=3, batch_size=8, sequence_length=16,
        precision="float32", validation_data=public, early_stopping_patience=5, verbose=0, tensorboard=False,
        privacy=ka.DPConfig(epsilon=3.0, delta=1e-3), callbacks=[FirstEpochBest()],
    )
    assert summary["best_metric"] == "val_accuracy" and summary["best_epoch"] == 1
    history = json.loads((run / "history.json").read_text())
    assert len(history["val_loss"]) == 3 and history["epsilon"][0] < history["epsilon"][-1]
    # Epoch 1's weights were chosen by metrics of epochs 2 and 3 too: the folder states all 18 steps.
    report = json.loads((run / "metrics.json").read_text())["privacy"]
    assert report["steps"] == 18 and report["epsilon"] == history["epsilon"][-1]
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["privacy"] == report
    assert ka.AdapterTextClassifier.from_adapter(str(run / "adapter")).privacy_report() == report
    config = json.loads((run / "train_config.json").read_text())
    assert config["num_validation_examples"] == 9 and config["num_train_examples"] == 48


def test_the_command_line_validates_a_private_run_on_public_data(tiny_preset, tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=16)
    public = write_class_folders(tmp_path / "public", per_class=3, seed=1)
    run = tmp_path / "run"
    assert train(data, run, tiny_preset, "--dp-epsilon", "3", "--dp-delta", "1e-3", "--validation-data", str(public),
                 "--early-stopping", "3") == 0
    printed = capsys.readouterr().out
    assert "best val_accuracy" in printed and "privacy: (3, 0.001)-DP per example" in printed
    config = json.loads((run / "train_config.json").read_text())
    assert config["validation_data"] == str(public.resolve()) and config["num_validation_examples"] == 9


@pytest.mark.slow  # ~15 s
def test_a_private_question_answering_run_protects_whole_questions(tiny_preset, tmp_path, capsys):
    data = write_squad(tmp_path / "squad.json", count=24)  # at 16 tokens most contexts need two windows
    run = tmp_path / "run"
    assert train(data, run, tiny_preset, "--dp-epsilon", "3", "--dp-delta", "1e-3") == 0
    assert "privacy: (3, 0.001)-DP per question" in capsys.readouterr().out
    report = json.loads((run / "metrics.json").read_text())["privacy"]
    # Poisson sampling draws questions (24), not windows: one row per question.
    assert report["unit"] == "question" and report["num_examples"] == 24
    assert report["sampling_rate"] == pytest.approx(8 / 24) and report["steps"] == 6
