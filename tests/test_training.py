"""The training recipe and the run folder, on a tiny preset and dataset."""

import json
import os

import keras
import pytest

import keras_adapters as ka
from keras_adapters import training


def test_default_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind: [])
    monkeypatch.setattr(training, "cpu_has_fast_bfloat16", lambda: True)
    assert training.default_precision() == "mixed_bfloat16"
    monkeypatch.setattr(training, "cpu_has_fast_bfloat16", lambda: False)
    assert training.default_precision() == "float32"
    monkeypatch.setattr(training.tf.config, "list_physical_devices", lambda kind: ["gpu"])
    assert training.default_precision() == "mixed_float16"
    with pytest.raises(ValueError, match="precision must be"):
        training.resolve_precision("float8")


def test_train_classifier_writes_a_complete_run_folder(tiny_preset, text_folder, tmp_path):
    run = tmp_path / "run"
    model, summary = ka.train_classifier(
        text_folder, run, preset=tiny_preset, method="lora", epochs=2, batch_size=4,
        sequence_length=16, precision="float32", validation_split=0.25, verbose=0,
    )
    names = sorted(os.listdir(run))
    assert {"adapter", "class_names.json", "train_config.json", "history.json", "metrics.json", "logs"} <= set(names)
    assert "backup" not in names
    assert json.loads((run / "class_names.json").read_text()) == ["business", "politics", "sport"]
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 2 and "val_macro_f1" in history
    config = json.loads((run / "train_config.json").read_text())
    assert config["method"]["method"] == "lora" and config["num_train_examples"] == 18
    assert summary["best_metric"] == "val_accuracy" and summary["best_epoch"] in (1, 2)
    # No copy of the backbone: the run folder (logs aside) is tiny.
    size = sum(f.stat().st_size for f in (run / "adapter").iterdir())
    assert size < 100_000
    loaded = ka.AdapterTextClassifier.from_adapter(str(run / "adapter"))
    assert loaded.class_names == ["business", "politics", "sport"]


def test_lr_and_clipping_reach_the_optimizer(tiny_preset, text_folder, tmp_path):
    model, _ = ka.train_classifier(
        text_folder, tmp_path / "r", preset=tiny_preset, method="houlsby", epochs=1, batch_size=8,
        sequence_length=16, precision="float32", validation_split=None, learning_rate=2e-3,
        verbose=0, tensorboard=False,
    )
    optimizer = model.optimizer
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.global_clipnorm == 1.0
    assert optimizer._learning_rate.peak == 2e-3


class _Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt("simulated interruption")


def test_interrupted_run_resumes_where_it_stopped(tiny_preset, text_folder, tmp_path):
    run = tmp_path / "run"
    kwargs = dict(
        preset=tiny_preset, method="ia3", epochs=3, batch_size=4, sequence_length=16,
        precision="float32", validation_split=0.25, verbose=0, tensorboard=False,
    )
    with pytest.raises(KeyboardInterrupt):
        ka.train_classifier(text_folder, run, callbacks=[_Interrupt(2)], **kwargs)
    assert (run / "backup").is_dir()
    _, summary = ka.train_classifier(text_folder, run, **kwargs)
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 1  # only epoch 3 ran after resuming
    assert not (run / "backup").exists()
    assert summary["best_epoch"] is not None


def test_mixed_bfloat16_training_keeps_float32_adapters(tiny_preset, text_folder, tmp_path):
    model, _ = ka.train_classifier(
        text_folder, tmp_path / "r", preset=tiny_preset, method="houlsby", epochs=1, batch_size=8,
        sequence_length=16, precision="mixed_bfloat16", validation_split=None, verbose=0, tensorboard=False,
    )
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert all(w.dtype == "float32" for w in model.trainable_weights)


def test_mirrored_strategy_is_a_flag(tiny_preset, text_folder, tmp_path):
    model, _ = ka.train_classifier(
        text_folder, tmp_path / "r", preset=tiny_preset, method="lora", epochs=1, batch_size=4,
        sequence_length=16, precision="float32", validation_split=None, strategy="mirrored",
        verbose=0, tensorboard=False,
    )
    config = json.loads((tmp_path / "r" / "train_config.json").read_text())
    assert config["strategy"] == "MirroredStrategy" and config["num_replicas"] >= 1
    assert model.predict(["the team won"], verbose=0).shape == (1, 3)
