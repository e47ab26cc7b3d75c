"""The training recipe and the run folder, on a tiny preset and dataset."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import cli_process
from conftest import write_class_folders

import keras_adapters as ka


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


@pytest.mark.slow  # 16-21 s: the default run stays under 15 minutes
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
    assert len(history["loss"]) == 3 and summary["epochs_run"] == 3  # epochs 1-2 kept from before
    assert not (run / "backup").exists()
    assert summary["best_epoch"] is not None


def test_mixed_bfloat16_training_keeps_float32_adapters(tiny_preset, text_folder, tmp_path):
    model, _ = ka.train_classifier(
        text_folder, tmp_path / "r", preset=tiny_preset, method="houlsby", epochs=1, batch_size=8,
        sequence_length=16, precision="mixed_bfloat16", validation_split=None, verbose=0, tensorboard=False,
    )
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert all(w.dtype == "float32" for w in model.trainable_weights)
    # The computation is bfloat16's: close to float32's with the same saved weights, not equal.
    full = ka.AdapterTextClassifier.from_adapter(str(tmp_path / "r" / "adapter"))
    tokens = full.preprocessor(["the team won the cup", "shares fell on the market"])
    bf16, f32 = (np.asarray(m.backbone(tokens)["sequence_output"], "float32") for m in (model, full))
    error = np.abs(bf16 - f32).max() / np.abs(f32).max()
    assert 1e-4 < error < 5e-2, error  # bfloat16 keeps 8 bits of mantissa


#: `keras-adapters ARGS` on a machine whose CPU shows as two devices (set before TensorFlow starts).
TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_adapters import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_mirrored_strategy_trains_on_every_local_device(tiny_preset, text_folder, tmp_path):
    run = tmp_path / "r"
    args = _train_args(text_folder, run, tiny_preset, epochs=2) + ["--strategy", "mirrored"]
    done = subprocess.run([sys.executable, "-c", TWO_CPUS, *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "train_config.json").read_text())
    assert (config["strategy"], config["num_replicas"]) == ("mirrored", 2)
    _check_complete_run(run, text_folder, tiny_preset, epochs=2)


# ------------------------------------------- killed runs, real processes
#: Runs `keras-adapters ARGS` and SIGKILLs itself at a chosen file operation:
#: just before or just after the nth `os.replace` whose target matches.
KILL_AT = """
import os, re, signal, sys
from keras_adapters import cli
pattern, when, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
real_replace, seen = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    hit = re.fullmatch(pattern, os.path.basename(os.fspath(dst)))
    seen[0] += bool(hit)
    if hit and seen[0] == nth and when == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst, *args, **kwargs)
    if hit and seen[0] == nth and when == "after":
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
sys.exit(cli.main(sys.argv[4:]))
"""


def _train_args(data, run, preset, epochs=3):
    return ["train", str(data), "--output", str(run), "--preset", preset, "--method", "lora",
            "--epochs", str(epochs), "--batch-size", "4", "--sequence-length", "16",
            "--precision", "float32", "--validation-split", "0.25", "--learning-rate", "3e-2", "--quiet"]


def _free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _workers(args, count=2, wait=True):
    """`keras-adapters ARGS` on `count` local workers of one cluster: [(returncode, stderr)]
    (or the processes, with `wait=False`)."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(count)]}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "keras_adapters.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                            "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
        )
        for i in range(count)
    ]
    if not wait:
        return processes
    return [(p.wait(timeout=600), p.stderr.read()) for p in processes]


@pytest.mark.slow
def test_two_workers_train_one_run_as_one_worker_does(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=12)
    epochs = 4
    run = tmp_path / "multi"
    for code, err in _workers(_train_args(data, run, tiny_preset, epochs) + ["--strategy", "multi-worker"]):
        assert code == 0, err
    _check_complete_run(run, data, tiny_preset, epochs)  # the chief's, and nothing left of worker 1
    config = json.loads((run / "train_config.json").read_text())
    assert (config["strategy"], config["num_replicas"]) == ("multi-worker", 2)
    # The same command on one worker: --batch-size is the global batch (2 workers x 2 here).
    assert cli_process(*_train_args(data, tmp_path / "single", tiny_preset, epochs)).returncode == 0
    history = {r: json.loads((tmp_path / r / "history.json").read_text()) for r in ("multi", "single")}
    multi, single = (max(history[r]["val_accuracy"]) for r in ("multi", "single"))
    # Learned (chance is 1/3) and as well as one worker, to one validation file (1/9).
    assert multi >= 0.5 and abs(multi - single) <= 0.12, history
    # Within 5%: dropout is drawn per worker (the two-replica test in the fast suite holds 2%).
    np.testing.assert_allclose(history["multi"]["loss"], history["single"]["loss"], rtol=0.05)


_TWO_CPU_REPLICAS = """
import sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_adapters import cli

sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.slow  # the default suite must stay near 15 min; CI runs it
def test_the_same_command_trains_alike_on_one_and_two_replicas(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=12)
    mirrored = _train_args(data, tmp_path / "two", tiny_preset) + ["--strategy", "mirrored"]
    result = subprocess.run([sys.executable, "-c", _TWO_CPU_REPLICAS, *mirrored], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    assert cli_process(*_train_args(data, tmp_path / "one", tiny_preset)).returncode == 0
    configs = {r: json.loads((tmp_path / r / "train_config.json").read_text()) for r in ("one", "two")}
    assert [(c["batch_size"], c["num_replicas"]) for c in configs.values()] == [(4, 1), (4, 2)]
    losses = {r: json.loads((tmp_path / r / "history.json").read_text())["loss"] for r in ("one", "two")}
    np.testing.assert_allclose(losses["two"], losses["one"], rtol=0.02)  # the same steps and schedule
    odd = _train_args(data, tmp_path / "odd", tiny_preset) + ["--strategy", "mirrored"]
    odd[odd.index("--batch-size") + 1] = "5"
    result = subprocess.run([sys.executable, "-c", _TWO_CPU_REPLICAS, *odd], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2 and "--batch-size 5 is the global batch" in result.stderr, result.stderr


@pytest.mark.slow
def test_killed_workers_resume_together(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=12)
    run = tmp_path / "run"
    args = _train_args(data, run, tiny_preset, epochs=6) + ["--strategy", "multi-worker"]
    first = _workers(args, wait=False)
    deadline = time.time() + 300
    while not (run / "backup" / "epoch-2").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    for process in first:
        process.kill()
        process.wait()
    assert not (run / "metrics.json").exists()
    worker = run / ".worker-1"
    assert (worker / "backup").is_dir()  # worker 1 keeps the state it resumes from
    # Without it, the workers cannot agree where to resume: refused, not a hang.
    os.rename(worker, tmp_path / "kept")
    for code, err in _workers(args):
        assert code == 2 and "cannot resume from the same epoch" in err, err
    shutil.rmtree(worker)
    os.rename(tmp_path / "kept", worker)
    for code, err in _workers(args):
        assert code == 0, err
    _check_complete_run(run, data, tiny_preset, epochs=6)


@pytest.mark.slow
def test_multi_worker_without_tf_config_says_what_to_set(tiny_preset, text_folder, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "keras_adapters.cli", *_train_args(text_folder, tmp_path / "r", tiny_preset),
         "--strategy", "multi-worker"], capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 2 and "reads the cluster from the TF_CONFIG environment variable" in done.stderr
    index_3_of_1 = {"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 3}}
    bad = cli_process(*_train_args(text_folder, tmp_path / "r", tiny_preset), "--strategy", "multi-worker",
                      env={"TF_CONFIG": json.dumps(index_3_of_1)})
    assert bad.returncode == 2 and "TF_CONFIG is not a valid cluster description" in bad.stderr
    assert not (tmp_path / "r").exists()


class _SavingModel:
    """What `BestAdapterCheckpoint` uses of a model: it records the epochs saved."""

    trainable_weights = ()

    def __init__(self):
        self.saved, self.epoch = [], None

    def save_adapter(self, directory):
        self.saved.append(self.epoch)


def _epochs(checkpoint, logs):
    model = _SavingModel()
    checkpoint.set_model(model)
    for epoch, entry in enumerate(logs):
        model.epoch = epoch + 1
        checkpoint.on_epoch_end(epoch, entry)
    return model.saved


def test_a_tie_on_the_monitored_metric_goes_to_the_lower_loss(tmp_path):
    from keras_adapters.runs import folder as runs
    from keras_adapters.runs.training import BestAdapterCheckpoint

    logs = [{"val_accuracy": a, "val_loss": vl, "loss": tl} for a, vl, tl in
            [(0.8, 0.5, 0.9), (1.0, 0.4, 0.8), (1.0, 0.3, 0.9), (1.0, 0.35, 0.1), (0.9, 0.1, 0.1)]]
    checkpoint = BestAdapterCheckpoint(tmp_path / "a", monitor="val_accuracy")
    assert _epochs(checkpoint, logs) == [1, 2, 3]  # epoch 4 ties at a higher validation loss
    assert (checkpoint.best, checkpoint.best_loss, checkpoint.best_epoch) == (1.0, 0.3, 3)
    # Without validation, the training loss breaks the tie.
    training = [{"accuracy": e["val_accuracy"], "loss": e["loss"]} for e in logs]
    assert _epochs(BestAdapterCheckpoint(tmp_path / "b", monitor="accuracy"), training) == [1, 2, 4]
    # A resumed run keeps the tie's loss from its backup (written as JSON, as a backup is) ...
    runs.write_json(tmp_path / "state.json", checkpoint.state())
    resumed = BestAdapterCheckpoint(tmp_path / "a", monitor="val_accuracy")
    resumed.restore(json.loads((tmp_path / "state.json").read_text()))
    assert _epochs(resumed, [{"val_accuracy": 1.0, "val_loss": 0.31, "loss": 0.0}]) == []
    # ... and a backup from before it recorded one lets the next tie win.
    old = BestAdapterCheckpoint(tmp_path / "a", monitor="val_accuracy")
    old.restore({"monitor": "val_accuracy", "value": 1.0, "epoch": 3})
    assert _epochs(old, [{"val_accuracy": 1.0, "val_loss": 0.31, "loss": 0.0}]) == [1]


def _killed(pattern, when, nth, args):
    return subprocess.run(
        [sys.executable, "-c", KILL_AT, pattern, when, str(nth), *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def _check_complete_run(run, data, preset, epochs):
    """A finished run: every epoch in history.json, and adapter/ is the best
    epoch's adapter (it scores the recorded best value on the validation set)."""
    history = json.loads((run / "history.json").read_text())
    train = json.loads((run / "metrics.json").read_text())["train"]
    assert len(history["loss"]) == epochs and train["epochs_run"] == epochs
    top = [i for i, v in enumerate(history["val_accuracy"]) if v == max(history["val_accuracy"])]
    best = min(top, key=lambda i: history["val_loss"][i])  # a tie goes to the lower validation loss
    assert train["best_epoch"] == best + 1 and train["best_value"] == history["val_accuracy"][best]
    assert not (run / "backup").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    model = ka.AdapterTextClassifier.from_adapter(str(run / "adapter"))
    model.compile()
    validation = ka.text_dataset_from_directory(
        data, model.preprocessor, batch_size=4, validation_split=0.25, subset="validation", seed=0,
        class_names=model.class_names,
    )
    accuracy = model.evaluate(validation, verbose=0, return_dict=True)["accuracy"]
    assert accuracy == pytest.approx(train["best_value"], abs=1e-6)


@pytest.mark.parametrize(
    "pattern, when, nth",
    [
        pytest.param(r"epoch-2", "before", 1, id="writing-the-epoch-2-backup", marks=pytest.mark.slow),
        pytest.param(r"history\.json", "before", 2, id="writing-history.json", marks=pytest.mark.slow),
        pytest.param(r"\.adapter\.old", "after", 1, id="between-the-adapter-folder-renames",
                     marks=pytest.mark.slow),
        pytest.param(r"metrics\.json", "before", 1, id="writing-metrics.json", marks=pytest.mark.slow),
    ],
)
def test_a_run_killed_at_any_write_resumes_and_completes(tiny_preset, tmp_path, pattern, when, nth):
    data = write_class_folders(tmp_path / "data", per_class=8)
    run = tmp_path / "run"
    args = _train_args(data, run, tiny_preset)
    killed = _killed(pattern, when, nth, args)
    assert killed.returncode == -9, killed.stderr  # the kill point was reached
    rerun = cli_process(*args)
    assert rerun.returncode == 0, rerun.stderr
    _check_complete_run(run, data, tiny_preset, epochs=3)


def test_an_adapter_save_killed_between_renames_leaves_the_old_adapter(tiny_preset, tmp_path):
    code = (
        "import os, signal, sys\n"
        "import keras_adapters as ka\n"
        "model = ka.AdapterTextClassifier.from_preset(sys.argv[1], num_classes=2, method='lora', sequence_length=16)\n"
        "model.save_adapter(sys.argv[2])\n"
        "real = os.replace\n"
        "def replace(src, dst):\n"
        "    real(src, dst)\n"
        "    if os.fspath(dst).endswith('.old'): os.kill(os.getpid(), signal.SIGKILL)\n"
        "os.replace = replace\n"
        "for w in model.trainable_weights: w.assign(w + 1.0)\n"
        "model.save_adapter(sys.argv[2])\n"
    )
    folder = tmp_path / "adapter"
    result = subprocess.run([sys.executable, "-c", code, tiny_preset, str(folder)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == -9, result.stderr
    assert not folder.exists()  # killed between the renames: the old folder waits aside
    loaded = ka.AdapterTextClassifier.from_adapter(str(folder))  # ... and is put back
    fresh = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, method="lora", sequence_length=16)
    for a, b in zip(loaded.trainable_weights, fresh.trainable_weights):
        if "lora_b" in a.path:  # zero at initialisation; the second save would have made it 1
            assert np.all(a.numpy() == 0.0)


@pytest.mark.slow  # 35-40 s; the fast suite must stay under 15 min
def test_rerun_with_other_settings_is_refused_unless_asked_to_start_over(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    args = _train_args(data, run, tiny_preset, epochs=1)
    assert cli_process(*args).returncode == 0
    before = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    other = [a if a != "lora" else "houlsby" for a in args]
    refused = cli_process(*other)
    assert refused.returncode == 2
    assert "holds a run with other settings (method: {'method': 'lora'" in refused.stderr
    assert "-> {'method': 'houlsby'" in refused.stderr
    assert "--overwrite" in refused.stderr
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == before  # nothing lost
    assert json.loads((run / "train_config.json").read_text())["method"]["method"] == "lora"
    started_over = cli_process(*other, "--overwrite")
    assert started_over.returncode == 0, started_over.stderr
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["method"]["method"] == "houlsby"
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 1


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_a_run_keeps_its_learning_rate_when_a_newer_default_differs(tiny_preset, tmp_path, monkeypatch):
    """A run started before `tasks.defaults` changed its (task, method) rate
    resumes (here: is found complete) at its own rate, not refused as changed."""
    from keras_adapters.tasks import defaults

    data = write_class_folders(tmp_path / "data", per_class=4)
    options = dict(preset=tiny_preset, method="lora", epochs=1, batch_size=4, sequence_length=16,
                   precision="float32", verbose=0, tensorboard=False)
    model, _ = ka.train_classifier(data, tmp_path / "run", **options)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["learning_rate"] == 1e-3
    monkeypatch.setitem(defaults.LEARNING_RATES, ("text_classification", "lora"), 5e-3)
    _, summary = ka.train_classifier(data, tmp_path / "run", **options)
    assert summary.get("already_complete") is True
    _, summary = ka.train_classifier(data, tmp_path / "fresh", **options)
    assert json.loads((tmp_path / "fresh" / "train_config.json").read_text())["learning_rate"] == 5e-3


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_a_run_keeps_its_precision_when_auto_picks_another(tiny_preset, tmp_path, monkeypatch):
    """`--precision auto` picked mixed_bfloat16 before 0.12: such a run resumes
    in it (here: is found complete), while a new run gets today's pick."""
    from keras_adapters.core import precision

    data = write_class_folders(tmp_path / "data", per_class=4)
    options = dict(preset=tiny_preset, method="lora", epochs=1, batch_size=4, sequence_length=16, verbose=0,
                   tensorboard=False)
    ka.train_classifier(data, tmp_path / "run", precision="mixed_bfloat16", **options)
    monkeypatch.setattr(precision, "default_precision", lambda task=None: "float32")
    _, summary = ka.train_classifier(data, tmp_path / "run", precision="auto", **options)
    assert summary.get("already_complete") is True
    with pytest.raises(ValueError, match="precision"):  # asked for explicitly: a change, refused
        ka.train_classifier(data, tmp_path / "run", precision="float32", **options)
    ka.train_classifier(data, tmp_path / "fresh", precision="auto", **options)
    assert json.loads((tmp_path / "fresh" / "train_config.json").read_text())["precision"] == "float32"


def test_a_validation_split_that_holds_no_file_trains_without_validation(tiny_preset, tiny_preprocessor, tmp_path):
    data = write_class_folders(tmp_path / "data", {"a": ["team", "cup"], "b": ["bank", "profit"]}, per_class=3)
    with pytest.warns(UserWarning, match="holds no file; training without validation"):
        _, summary = ka.train_classifier(
            data, tmp_path / "run", preset=tiny_preset, method="lora", epochs=1, batch_size=2,
            sequence_length=16, precision="float32", validation_split=0.1, verbose=0, tensorboard=False,
        )
    assert summary["best_metric"] == "accuracy"
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["validation_split"] is None and config["num_train_examples"] == 6
    with pytest.raises(ka.DatasetError, match="holds no file"):
        ka.text_dataset_from_directory(data, tiny_preprocessor, validation_split=0.1, subset="both")


@pytest.mark.slow
def test_mixed_float16_end_to_end(tiny_preset, text_folder, tmp_path):
    """float16 compute with loss scaling: trains, saves, reloads, merges and
    exports. Stated tolerance: probabilities within 5e-3 of the float32
    computation with the same weights (float16 keeps ~3 significant digits)."""
    from conftest import TEXTS

    from keras_adapters.serving import export

    model, summary = ka.train_classifier(
        text_folder, tmp_path / "r", preset=tiny_preset, method="lora", epochs=3, batch_size=4,
        sequence_length=16, precision="mixed_float16", validation_split=0.25, learning_rate=3e-2,
        verbose=0, tensorboard=False,
    )
    assert model.dtype_policy.name == "mixed_float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    # Every step went through dynamic loss scaling (none overflowed at scale 2^15).
    steps = int(model.optimizer.iterations.numpy())
    assert steps == 3 * 5 and int(model.optimizer.step_counter.numpy()) == steps
    assert float(model.optimizer.dynamic_scale.numpy()) == 2.0**15
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < history["loss"][0]
    assert model.backbone(model.preprocessor(TEXTS[:1]))["sequence_output"].dtype == "float16"

    # The best adapter, reloaded in float16 and in float32.
    adapter = str(tmp_path / "r" / "adapter")
    again = ka.AdapterTextClassifier.from_adapter(adapter, dtype="mixed_float16")
    full = ka.AdapterTextClassifier.from_adapter(adapter)
    reloaded, reference = again.predict(TEXTS, verbose=0), full.predict(TEXTS, verbose=0)
    np.testing.assert_allclose(reloaded, reference, atol=5e-3)
    assert 0 < np.abs(reloaded - reference).max()  # float16 was really used

    # Merged into the float16 backbone, and exported: the same outputs.
    merged = again.merge_adapter().predict(TEXTS, verbose=0)
    np.testing.assert_allclose(merged, reference, atol=5e-3)
    out = export.export_saved_model(again, str(tmp_path / "sm"))
    import tensorflow as tf

    served = tf.saved_model.load(out).signatures["serving_default"](text=tf.constant(TEXTS))
    np.testing.assert_allclose(served["probabilities"].numpy(), reference, atol=5e-3)


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_a_model_that_predicts_one_class_is_warned_about(tiny_preset):
    """The first symptom users hit (a tagger answering O everywhere): said
    during training, and only when it happens."""
    from conftest import LABELS
    from conftest import TEXTS

    from keras_adapters.runs.training import CollapseWarning

    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=4, method="lora", sequence_length=16,
                                                 pooling="mean")
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    head = model.output_head
    head.logits.kernel.assign(np.zeros(head.logits.kernel.shape, "float32"))
    head.logits.bias.assign(np.array([5.0, 0.0, 0.0, 0.0], "float32"))
    with pytest.warns(UserWarning, match=r"Epoch 1: every validation prediction is the same class"):
        model.fit(TEXTS, LABELS, validation_data=(TEXTS, LABELS), epochs=1, verbose=0,
                  callbacks=[CollapseWarning()])
    head.logits.bias.assign(np.zeros(4, "float32"))
    # The tiny backbone's texts differ little: a large kernel tells them apart.
    head.logits.kernel.assign(50 * np.random.default_rng(0).standard_normal(head.logits.kernel.shape).astype("float32"))
    model.set_active_adapters("default")
    assert len(set(model.predict(TEXTS, verbose=0).argmax(-1))) > 1
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        history = model.fit(TEXTS, LABELS, validation_data=(TEXTS, LABELS), epochs=1, verbose=0,
                            callbacks=[CollapseWarning()])
    assert history.history["val_predicted_classes"][0] > 1
    assert not [w for w in seen if "same class" in str(w.message)]


def _val_accuracy_best_at_first_epoch():
    """A callback that makes epoch 1 the best by `val_accuracy` (it runs
    before the run's own callbacks, which read the same logs)."""

    class FirstEpochBest(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_accuracy"] = 1.0 if epoch == 0 else 0.0

    return FirstEpochBest()


def test_validation_data_chooses_the_epoch_from_its_own_files(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "train", per_class=8)
    dev = write_class_folders(tmp_path / "dev", per_class=3, seed=1)
    run = tmp_path / "run"
    _, summary = ka.train_classifier(
        data, run, preset=tiny_preset, method="lora", epochs=2, batch_size=4, sequence_length=16,
        precision="float32", validation_data=dev, verbose=0, tensorboard=False,
        callbacks=[_val_accuracy_best_at_first_epoch()],
    )
    config = json.loads((run / "train_config.json").read_text())
    # every training file trains (no split); the validation set is the dev folder's 3 x 3 files
    assert config["num_train_examples"] == 24 and config["num_validation_examples"] == 9
    assert config["validation_data"] == str(dev.resolve()) and config["validation_split"] is None
    assert summary["best_metric"] == "val_accuracy" and summary["best_epoch"] == 1
    history = json.loads((run / "history.json").read_text())
    assert len(history["val_loss"]) == 2


@pytest.mark.parametrize(
    "change,words",
    [
        ("split", "validation_split 0.2 and validation_data both give validation examples"),
        ("same", "validation_data is the training data itself"),
        ("missing", "does not exist"),
        ("unknown class", "has class folder(s) ['weather']"),
    ],
)
def test_unusable_validation_data_is_refused(tiny_preset, tmp_path, change, words):
    data = write_class_folders(tmp_path / "train", per_class=4)
    dev = write_class_folders(tmp_path / "dev", per_class=2, seed=1)
    options = {"validation_data": dev}
    if change == "split":
        options["validation_split"] = 0.2
    elif change == "same":
        options["validation_data"] = data
    elif change == "missing":
        options["validation_data"] = tmp_path / "nowhere"
    else:
        write_class_folders(tmp_path / "dev", classes={"weather": ["rain", "sun"]}, per_class=2)
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(words)):
        ka.train_classifier(data, tmp_path / "run", preset=tiny_preset, method="lora", epochs=1, batch_size=4,
                            sequence_length=16, precision="float32", verbose=0, tensorboard=False, **options)
    assert not (tmp_path / "run" / "adapter").exists()


def test_a_tagger_validates_on_a_conll_file_of_its_tags(tiny_preset, tmp_path):
    from conftest import write_conll

    train_file, dev_file = write_conll(tmp_path / "train.conll", 32), write_conll(tmp_path / "dev.conll", 8, seed=1)
    _, summary = ka.train_classifier(
        train_file, tmp_path / "run", preset=tiny_preset, method="lora", epochs=1, batch_size=8,
        sequence_length=16, precision="float32", validation_data=dev_file, verbose=0, tensorboard=False,
    )
    config = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert config["num_train_examples"] == 32 and config["num_validation_examples"] == 8
    assert summary["best_metric"] == "val_tag_f1"
