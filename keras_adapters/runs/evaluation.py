"""Evaluating and using a run folder: each task's report, confusion matrices.

The reports themselves belong to the tasks (`keras_adapters.tasks`); their
0.8 names stay importable from here.
"""

import numpy as np

from keras_adapters import tasks
from keras_adapters.runs.folder import load_run
from keras_adapters.tasks.classification import classification_report  # noqa: F401
from keras_adapters.tasks.classification import format_report  # noqa: F401
from keras_adapters.tasks.classification import predict_texts  # noqa: F401
from keras_adapters.tasks.question_answering import answer_report  # noqa: F401
from keras_adapters.tasks.question_answering import format_answer_report  # noqa: F401
from keras_adapters.tasks.token_classification import format_token_report  # noqa: F401
from keras_adapters.tasks.token_classification import token_report  # noqa: F401


def evaluate_run(run_dir, data, batch_size=32, dtype=None, **data_options):
    """The report of the run's adapter on `data` (its task's data files:
    a folder or `tfds:NAME`, a pair file, a CoNLL file, a SQuAD file, a
    JSONL file of prompts and completions for a decoder's run); labels are
    matched by name. See each task's `evaluate`."""
    model = load_run(run_dir, dtype=dtype)
    result = tasks.get_task(model.task).evaluate(model, data, batch_size=batch_size, **data_options)
    if model.privacy_report():  # trained with DP-SGD: the guarantee its adapter folder records
        result["privacy"] = model.privacy_report()
    return result


def write_confusion_png(result, path):
    """Draw the confusion matrix (counts, row-normalised colours) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result["class_names"]
    matrix = np.asarray(result["confusion_matrix"], dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = 1.2 + 0.7 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j, i, int(matrix[i, j]), ha="center", va="center",
                color="white" if shares[i, j] > 0.5 else "black",
            )
    ax.set_title(f"accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


