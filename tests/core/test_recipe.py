"""The compile recipe: schedule and metrics."""

import numpy as np
import pytest

from keras_adapters import tasks
from keras_adapters.core import recipe
from keras_adapters.runs.evaluation import classification_report


def test_warmup_linear_decay_shape():
    schedule = recipe.WarmupLinearDecay(1e-3, total_steps=100, warmup_steps=10)
    lr = lambda s: float(schedule(s))  # noqa: E731
    assert lr(0) == pytest.approx(1e-4)
    assert lr(9) == pytest.approx(1e-3)
    assert lr(10) == pytest.approx(1e-3)
    assert lr(55) == pytest.approx(5e-4)
    assert lr(100) == pytest.approx(0.0, abs=1e-9)
    assert lr(500) == pytest.approx(0.0, abs=1e-9)
    again = recipe.WarmupLinearDecay.from_config(schedule.get_config())
    assert float(again(30)) == pytest.approx(lr(30))


def test_sparse_macro_f1_matches_numpy_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    probs = rng.dirichlet(np.ones(4), 50).astype("float32")
    metric = recipe.SparseMacroF1(4)
    metric.update_state(labels, probs)
    expected = classification_report(labels, probs, list("abcd"))["macro_f1"]
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)




def test_token_metrics_count_labelled_tokens_only():
    import numpy as np

    from keras_adapters.core import recipe

    y_true = np.array([[-1, 0, 2, -1, 1, -1], [-1, 0, 0, 2, -1, -1]])
    predicted = np.array([[1, 0, 2, 1, 0, 1], [2, 1, 0, 2, 2, 2]])  # values at -1 positions must not count
    y_pred = np.eye(3)[predicted].astype("float32")
    tagging = tasks.get_task("token_classification")
    accuracy, f1, classes = tagging.metrics(3, ["O", "B-X", "I-X"])
    accuracy.update_state(y_true, y_pred)
    f1.update_state(y_true, y_pred)
    classes.update_state(y_true, y_pred)
    assert float(classes.result()) == 3  # labelled predictions 0 2 0 | 1 0 2
    classes.reset_state()
    classes.update_state(y_true, np.eye(3)[np.where(y_true == -1, 1, 0)].astype("float32"))
    assert float(classes.result()) == 1  # only O where labelled
    # labelled: (0,0) (2,2) (1,0) | (0,1) (0,0) (2,2) -> 4 of 6 right
    assert float(accuracy.result()) == pytest.approx(4 / 6)
    # non-O: true 3 (2, 1, 2), predicted 3 (2, 1?, 2): hits 2 (both 2s), predicted non-O 3 (2, B-X at (0,1), 2)
    assert float(f1.result()) == pytest.approx(2 * 2 / (3 + 3))
    f1.reset_state()
    assert float(f1.result()) == 0.0
    assert tagging.monitor == "tag_f1"


def test_predicted_classes_counts_argmax_classes_on_labelled_positions():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(5), (6, 4)).astype("float32")  # [sentences, tokens, tags]
    labels = rng.integers(-1, 5, (6, 4))
    metric = recipe.PredictedClasses(5, ignore_class=-1)
    metric.update_state(labels[:3], probs[:3])
    metric.update_state(labels[3:], probs[3:])
    expected = len(set(probs.argmax(-1)[labels != -1].tolist()))
    assert float(metric.result()) == expected
    collapsed = np.zeros((4, 5), "float32")
    collapsed[:, 2] = 1.0
    metric.reset_state()
    metric.update_state(np.arange(4) % 5, collapsed)
    assert float(metric.result()) == 1.0
    # Unlabelled positions do not count, whatever they predict.
    metric.update_state(np.array([-1, -1]), np.eye(5, dtype="float32")[:2])
    assert float(metric.result()) == 1.0
    assert recipe.PredictedClasses.from_config(metric.get_config()).ignore_class == -1
