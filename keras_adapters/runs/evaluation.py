"""Evaluating and using a run folder: metrics, reports, confusion matrices."""

import numpy as np

from keras_adapters.tasks.question_answering import metrics as answer_metrics
from keras_adapters.io import text_data as data_lib
from keras_adapters.tasks.token_classification import metrics as entity_metrics
from keras_adapters.tasks import pair_classification as pair_data
from keras_adapters.tasks.question_answering import data as qa_data
from keras_adapters import tasks
from keras_adapters.tasks.token_classification import data as token_data
from keras_adapters.runs.folder import load_run


def classification_report(labels, probabilities, class_names):
    """Accuracy, macro-F1, log loss, per-class P/R/F1 and the confusion matrix.

    Computed in NumPy (float64) from the model's probabilities, independent
    of the Keras metrics used during training.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    predicted = probabilities.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    per_class = {}
    f1s = []
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        support = int(confusion[i].sum())
        predicted_count = confusion[:, i].sum()
        precision = tp / predicted_count if predicted_count else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": support,
        }
        if support:
            f1s.append(f1)
    picked = probabilities[np.arange(len(labels)), labels]
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        # Over the classes present in the data, so a subset folder is fair.
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "loss": float(-np.log(np.clip(picked, 1e-12, 1.0)).mean()) if len(labels) else 0.0,
        "num_examples": int(len(labels)),
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def token_report(model, data, batch_size=32):
    """Entity-level precision, recall, F1 (0-1, overall and per type; the
    seqeval definition, `entity_metrics`) of a token model on a CoNLL file,
    and the accuracy of its word tags. Words past the sequence length count
    as tagged `O`."""
    dataset = token_data.token_dataset_from_file(
        data, model.preprocessor, batch_size=batch_size, shuffle=False, tag_names=model.class_names
    )
    names = model.class_names
    predicted, row = [], 0
    for x, y in dataset:
        probabilities = np.asarray(model.predict_on_batch(x))
        for p, labels in zip(probabilities, y.numpy()):
            predicted.append(token_data.word_tags(p, labels, len(dataset.sentences[row]), names))
            row += 1
    report = entity_metrics.entity_report(dataset.tags, predicted)
    pairs = [(t, p) for ts, ps in zip(dataset.tags, predicted) for t, p in zip(ts, ps)]
    report["tag_accuracy"] = float(np.mean([t == p for t, p in pairs]))
    report["num_words"] = len(pairs)
    return report


def answer_report(model, data, batch_size=32):
    """SQuAD v1.1 exact match and F1 (0-100, `answer_metrics`) of a
    question-answering model on a SQuAD file, each question scored against
    all its reference answers; `num_examples` counts questions."""
    examples = qa_data.read_squad(data)
    found = model.answer_examples(examples, batch_size=batch_size)
    predictions = {e["id"]: f["answer"] for e, f in zip(examples, found)}
    references = {e["id"]: [a["text"] for a in e["answers"]] for e in examples}
    return answer_metrics.squad_scores(predictions, references)


def format_answer_report(result):
    return (
        f"questions {result['num_examples']}   exact match {result['exact_match']:.2f}   "
        f"F1 {result['f1']:.2f}"
    )


def format_token_report(result):
    lines = [
        f"sentences {result['num_examples']}   entity precision {result['precision']:.4f}   "
        f"recall {result['recall']:.4f}   F1 {result['f1']:.4f}   tag accuracy {result['tag_accuracy']:.4f}",
        "",
        f"{'type':20s}{'precision':>10s}{'recall':>10s}{'f1':>10s}{'support':>10s}",
    ]
    for kind, c in result["per_type"].items():
        lines.append(f"{kind:20s}{c['precision']:10.4f}{c['recall']:10.4f}{c['f1']:10.4f}{c['support']:10d}")
    return "\n".join(lines)


def evaluate_run(run_dir, data, batch_size=32, dtype=None, **data_options):
    """Evaluate the run's adapter on a folder (or `tfds:NAME`), a file of
    text pairs for a pair run, a CoNLL file for a token run (`token_report`)
    or a SQuAD file for a question-answering run (`answer_report`); labels
    are matched by name."""
    model = load_run(run_dir, dtype=dtype)
    if model.task == tasks.QUESTION_ANSWERING:
        return answer_report(model, data, batch_size=batch_size)
    if model.task == tasks.TOKEN_CLASSIFICATION:
        return token_report(model, data, batch_size=batch_size)
    pair_keys = {k: data_options.pop(k) for k in pair_data.DEFAULT_KEYS if k in data_options}
    if model.task == tasks.PAIR_CLASSIFICATION:
        dataset = pair_data.pair_dataset_from_file(
            data, model.preprocessor, batch_size=batch_size, shuffle=False,
            class_names=model.class_names, **pair_keys,
        )
    else:
        dataset = data_lib.load_text_dataset(
            data,
            model.preprocessor,
            batch_size=batch_size,
            shuffle=False,
            class_names=model.class_names,
            **data_options,
        )
    labels, probabilities = [], []
    for x, y in dataset:
        probabilities.append(np.asarray(model.predict_on_batch(x), dtype=np.float64))
        labels.append(np.asarray(y))
    if not labels:
        raise data_lib.DatasetError(f"{data!r} yielded no examples to evaluate.")
    return classification_report(
        np.concatenate(labels), np.concatenate(probabilities), model.class_names
    )


def format_report(result):
    """A readable text report: summary, per-class table, confusion matrix."""
    names = result["class_names"]
    width = max(12, max(len(n) for n in names) + 2)
    lines = [
        f"examples {result['num_examples']}   accuracy {result['accuracy']:.4f}   "
        f"macro-F1 {result['macro_f1']:.4f}   loss {result['loss']:.4f}",
        "",
        f"{'class':{width}s}{'precision':>10s}{'recall':>10s}{'f1':>10s}{'support':>10s}",
    ]
    for name in names:
        c = result["per_class"][name]
        lines.append(
            f"{name:{width}s}{c['precision']:10.4f}{c['recall']:10.4f}{c['f1']:10.4f}{c['support']:10d}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cell = max(6, max(len(n) for n in names) + 1)
    lines.append(" " * width + "".join(f"{n[:cell - 1]:>{cell}s}" for n in names))
    for name, row in zip(names, result["confusion_matrix"]):
        lines.append(f"{name:{width}s}" + "".join(f"{v:{cell}d}" for v in row))
    return "\n".join(lines)


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


def predict_texts(model, texts, batch_size=32):
    """[{"label": name, "label_id": i, "probabilities": {name: p}}] per text
    (`texts`: a list of strings, or a tuple `(texts_a, texts_b)` of pairs)."""
    texts = tuple(list(t) for t in texts) if isinstance(texts, tuple) else list(texts)
    probabilities = model.predict(texts, batch_size=batch_size, verbose=0)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    out = []
    for row in np.asarray(probabilities, dtype=np.float64):
        best = int(row.argmax())
        out.append(
            {
                "label": names[best],
                "label_id": best,
                "probabilities": {n: round(float(p), 6) for n, p in zip(names, row)},
            }
        )
    return out
