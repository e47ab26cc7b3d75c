"""A new task is one module: a toy regression task defined here, in tests/,
registered through the public registry, trained, evaluated, saved, loaded
and exported without touching the package; and the registry's own rules."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_adapters as ka
from keras_adapters import cli
from keras_adapters.tasks.base import COMMON_HEAD_KEYS

SCALE = 10.0  # words per unit of the target


@keras.saving.register_keras_serializable(package="keras_adapters_tests")
class LengthHead(keras.layers.Layer):
    """The [CLS] vector -> one number: the text's length in words / SCALE."""

    def __init__(self, num_classes=1, class_names=None, pooling="cls", dropout=0.0, sequence_length=None,
                 task="text_length", **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.class_names = 1, ["length"]
        self.pooling, self.dropout_rate, self.sequence_length, self.task = pooling, dropout, sequence_length, task
        self.dense = keras.layers.Dense(1, dtype=self.dtype_policy, name="value")

    def build(self, hidden_dim):
        self.dense.build((None, int(hidden_dim)))
        self.built = True

    def call(self, sequence_output, pooled_output, padding_mask, training=None):
        return ops.cast(self.dense(sequence_output[:, 0, :]), "float32")

    def weights_by_key(self):
        return {f"value/{w.name}": w for w in self.dense.weights}

    def label_names(self):
        return self.class_names

    def task_config(self):
        return {"task": self.task, "num_classes": 1, "class_names": self.class_names, "pooling": self.pooling,
                "dropout": self.dropout_rate, "sequence_length": self.sequence_length}

    def get_config(self):
        return {**super().get_config(), **self.task_config()}


@keras.saving.register_keras_serializable(package="keras_adapters_tests")
class Closeness(keras.metrics.Mean):
    """-|y - prediction| (higher is better, as the best epoch is picked)."""

    def __init__(self, name="closeness", **kwargs):
        super().__init__(name=name, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        error = tf.abs(tf.reshape(tf.cast(y_true, tf.float32), [-1]) - tf.reshape(y_pred, [-1]))
        return super().update_state(-error)


def _read(path):
    return [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]


def _target(texts):
    return np.array([len(t.split()) / SCALE for t in texts], np.float32)


class LengthServing(ka.tasks.TaskServing):
    text_signature = [tf.TensorSpec([None], tf.string, name="text")]

    def serve_text(self, text):
        inputs = self.model.preprocessor(tf.reshape(text, [-1]))
        return {"words": SCALE * tf.reshape(self.model(inputs, training=False), [-1])}


class TextLength(ka.Task):
    """Regression: how many words a text has. Data: a .lengths file, one text per line."""

    name = "text_length"
    head_class = LengthHead
    monitor = "closeness"
    unit = "line"
    data_formats = "a .lengths file of texts, one per line (text-length)"

    def loss(self):
        return keras.losses.MeanSquaredError()

    def metrics(self, num_classes, class_names=None):
        return [Closeness()]

    def detect(self, path, options):
        return not isinstance(path, str) and path.suffix == ".lengths"

    def check_data(self, data):
        if not str(data).endswith(".lengths"):
            raise ValueError(f"text-length reads a .lengths file, not {data!r}.")

    def _dataset(self, texts, preprocessor, batch_size):
        ds = tf.data.Dataset.from_tensor_slices((texts, _target(texts))).batch(batch_size)
        ds = ds.map(lambda x, y: (preprocessor(x), y))
        ds.class_names, ds.num_examples = ["length"], len(texts)
        return ds

    def datasets(self, data, preprocessor, validation_split, batch_size=32, **options):
        texts = _read(data)
        cut = len(texts) - int(len(texts) * (validation_split or 0))
        train = self._dataset(texts[:cut], preprocessor, batch_size)
        return train, (self._dataset(texts[cut:], preprocessor, batch_size) if cut < len(texts) else None)

    def count_examples(self, data, options):
        return len(_read(data))

    def evaluate(self, model, data, batch_size=32, **options):
        texts = _read(data)
        predicted = np.asarray(model.predict(self._dataset(texts, model.preprocessor, batch_size), verbose=0))
        error = np.abs(predicted.reshape(-1).astype(np.float64) - _target(texts)) * SCALE
        return {"mean_absolute_error_words": float(error.mean()), "num_examples": len(texts)}

    def predict(self, model, columns, batch_size=32):
        ds = tf.data.Dataset.from_tensor_slices(columns[0]).batch(batch_size).map(model.preprocessor)
        values = np.asarray(model.predict(ds, verbose=0)).reshape(-1) * SCALE
        return [{"text": t, "words": round(float(v), 3)} for t, v in zip(columns[0], values)]

    def format_prediction(self, result):
        return f"{result['words']:.1f}\t{result['text']}"

    def serving(self, model, length):
        return LengthServing(model, length)


ka.register_task(TextLength())


@pytest.fixture(scope="module")
def length_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lengths")
    words = "the cat sat on a mat by the door and then it left".split()
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 12)))) for _ in range(96)]
    train, test = folder / "train.lengths", folder / "test.lengths"
    train.write_text("\n".join(texts[:80]) + "\n")
    test.write_text("\n".join(texts[80:]) + "\n")
    return train, test


@pytest.fixture(scope="module")
def length_run(length_files, tiny_preset, tmp_path_factory):
    run = tmp_path_factory.mktemp("length_run") / "run"
    model, summary = ka.train_classifier(
        str(length_files[0]), str(run), preset=tiny_preset, method="lora", epochs=30, batch_size=16,
        sequence_length=16, learning_rate=3e-3, validation_split=0.2, precision="float32", tensorboard=False,
        verbose=0,
    )
    return run, model, summary


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_a_registered_task_is_detected_listed_and_trains(length_run, length_files, capsys):
    run, model, summary = length_run
    assert ka.tasks.detect_task(length_files[0]) == "text_length"
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "text-length" in capsys.readouterr().out  # --task choices come from the registry
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["task"]["type"] == "text_length"
    assert isinstance(model.output_head, LengthHead)
    history = json.loads((run / "history.json").read_text())
    # It learnt: the validation error fell well below the first epoch's.
    assert -history["val_closeness"][-1] < 0.6 * -history["val_closeness"][0]


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_its_adapter_saves_loads_and_evaluates_as_the_model(length_run, length_files, tmp_path):
    run, model, _ = length_run
    texts = _read(length_files[1])

    def predicted(m):
        return np.asarray(m.predict(TextLength()._dataset(texts, m.preprocessor, 8), verbose=0))

    model.save_adapter(str(tmp_path / "length"))
    again = ka.AdapterTextClassifier.from_adapter(str(tmp_path / "length"))
    assert isinstance(again.output_head, LengthHead) and again.task == "text_length"
    np.testing.assert_allclose(predicted(again), predicted(model), atol=1e-6)
    # The run folder holds the best epoch's adapter; evaluate reports on it.
    best = predicted(ka.load_run(run))
    report = ka.runs.evaluation.evaluate_run(run, length_files[1])
    error = np.abs(best.reshape(-1).astype(np.float64) - _target(texts)).mean() * SCALE
    assert report == {"mean_absolute_error_words": pytest.approx(error, rel=1e-6), "num_examples": len(texts)}
    # A model without the task registered cannot hold the adapter: a clear error, nothing half-loaded.
    code = (
        "import keras_adapters as ka, sys\n"
        "try:\n    ka.AdapterTextClassifier.from_adapter(sys.argv[1])\n"
        "except ka.AdapterFormatError as e:\n    print('REFUSED', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(run / "adapter")], capture_output=True, text=True)
    assert "REFUSED" in out.stdout and "'text_length'" in out.stdout and "register that task" in out.stdout


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_cli_predict_and_evaluate_use_the_task(length_run, length_files, capsys):
    run, model, _ = length_run
    assert cli.main(["predict", str(run), "a b c", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["text"] == "a b c" and isinstance(result["words"], float)
    assert cli.main(["evaluate", str(run), str(length_files[1]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_examples"] == 16


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_its_saved_model_serves_the_task_signature(length_run, tmp_path):
    run, model, _ = length_run
    texts = ["the cat", "the cat sat on a mat by the door"]
    out = ka.export_saved_model(model, str(tmp_path / "served"), version=1)
    code = (
        "import sys, json, tensorflow as tf, tensorflow_text\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "print(json.dumps(m.signatures['serving_default'](text=tf.constant(json.loads(sys.argv[2])))['words']"
        ".numpy().tolist()))\n"
    )
    served = subprocess.run([sys.executable, "-c", code, out, json.dumps(texts)], capture_output=True, text=True)
    assert served.returncode == 0, served.stderr[-2000:]
    expected = [r["words"] for r in TextLength().predict(model, [texts])]
    np.testing.assert_allclose(json.loads(served.stdout.strip().splitlines()[-1]), expected, atol=2e-3)


def test_the_registry_refuses_what_it_cannot_hold():
    with pytest.raises(TypeError, match="Task instance"):
        ka.register_task("text_length")

    class Nameless(ka.Task):
        head_class = LengthHead

    with pytest.raises(TypeError, match="with a name"):
        ka.register_task(Nameless())

    class Other(TextLength):
        pass

    with pytest.raises(ValueError, match="registered already"):
        ka.register_task(Other())
    with pytest.raises(ValueError, match="Unknown task 'no-such-task'; the tasks are text-classification"):
        ka.tasks.get_task("no-such-task")
    assert ka.tasks.get_task("text-length").name == "text_length"
    assert set(COMMON_HEAD_KEYS) <= set(LengthHead().task_config())


def test_the_built_in_tasks_are_registered_in_detection_order():
    names = ka.tasks.available_tasks()
    assert names[:6] == ["text_classification", "pair_classification", "token_classification",
                         "question_answering", "multi_label_classification", "causal_lm"]
