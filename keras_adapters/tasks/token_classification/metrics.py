"""Entity-level precision, recall and F1 of tag sequences (seqeval's definition).

Tags are `O` or `<prefix>-<TYPE>` with prefix `B`, `I` (BIO), or also `E`,
`S` (IOBES). Entities are read off a sequence with the CoNLL-2000 chunk
rules that `conlleval` and seqeval's default mode use (an `I-X` after `O`
or after another type starts an entity), and an entity counts as found only
when its type and both ends match exactly. Each sentence is read on its own.

Example:
```python
entities(["B-PER", "I-PER", "O", "B-LOC"])  # [("PER", 0, 1), ("LOC", 3, 3)]
entity_report([["B-PER", "I-PER"]], [["B-PER", "O"]])["f1"]  # 0.0
```
"""

import keras
import tensorflow as tf

from keras_adapters.core.recipe import IGNORE

TAG_PREFIXES = ("B", "I", "E", "S")


def _split(tag):
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    return prefix, kind or "_"


def _ends(prev_prefix, prefix, prev_kind, kind):
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return prev_prefix != "O" and prev_kind != kind


def _starts(prev_prefix, prefix, prev_kind, kind):
    if prefix in ("B", "S"):
        return True
    if prev_prefix in ("E", "S", "O") and prefix in ("E", "I"):
        return True
    return prefix != "O" and prev_kind != kind


def entities(tags):
    """[(type, first index, last index)] of one sentence's tags."""
    found = []
    prev_prefix, prev_kind, begin = "O", "", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, kind = _split(tag)
        if _ends(prev_prefix, prefix, prev_kind, kind):
            found.append((prev_kind, begin, i - 1))
        if _starts(prev_prefix, prefix, prev_kind, kind):
            begin = i
        prev_prefix, prev_kind = prefix, kind
    return found


def _scores(correct, predicted, true):
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def entity_report(true_tags, predicted_tags):
    """Micro-averaged entity precision, recall, F1 (0-1) and the same per type.

    Args:
        true_tags, predicted_tags: one list of tags per sentence, sentence i
            of both of the same length.

    Returns:
        {"precision", "recall", "f1", "per_type": {type: {"precision",
        "recall", "f1", "support"}}, "num_examples": sentences}.
    """
    if len(true_tags) != len(predicted_tags):
        raise ValueError(f"{len(true_tags)} true sentences but {len(predicted_tags)} predicted.")
    true, predicted = set(), set()
    for i, (t, p) in enumerate(zip(true_tags, predicted_tags)):
        if len(t) != len(p):
            raise ValueError(f"Sentence {i} has {len(t)} true tags but {len(p)} predicted.")
        true |= {(i, *e) for e in entities(t)}
        predicted |= {(i, *e) for e in entities(p)}
    correct = true & predicted
    report = _scores(len(correct), len(predicted), len(true))
    per_type = {}
    for kind in sorted({e[1] for e in true | predicted}):
        count = [sum(e[1] == kind for e in group) for group in (correct, predicted, true)]
        per_type[kind] = {**_scores(*count), "support": count[2]}
    return {**report, "per_type": per_type, "num_examples": len(true_tags)}


# ------------------------------------------------------ Keras training metrics
@keras.saving.register_keras_serializable(package="keras_adapters")
class MaskedAccuracy(keras.metrics.Mean):
    """Accuracy over the positions whose label is not `ignore`: for token
    tagging, the first piece of each word (padding and later pieces are -1)."""

    def __init__(self, ignore=IGNORE, name="accuracy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore = ignore

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        hit = tf.equal(y_true, tf.cast(tf.argmax(y_pred, axis=-1), tf.int32))
        return super().update_state(tf.boolean_mask(tf.cast(hit, self.dtype), tf.not_equal(y_true, self.ignore)))

    def get_config(self):
        return {**super().get_config(), "ignore": self.ignore}


@keras.saving.register_keras_serializable(package="keras_adapters")
class TagF1(keras.metrics.Metric):
    """Micro F1 of the tags other than `outside` (`O`) over labelled tokens.

    What a tagger is picked by during training: token accuracy stays at the
    share of `O` while a model tags nothing, while this rises with every
    entity word found. (Entity-level F1 needs whole sentences:
    `token_classification.token_report`.)
    """

    def __init__(self, outside=0, ignore=IGNORE, name="tag_f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.outside, self.ignore = outside, ignore
        self.counts = self.add_variable(shape=(3,), initializer="zeros", name="counts")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true, tf.int32)
        predicted = tf.cast(tf.argmax(y_pred, axis=-1), tf.int32)
        labelled = tf.not_equal(y_true, self.ignore)
        true_tag = labelled & tf.not_equal(y_true, self.outside)
        predicted_tag = labelled & tf.not_equal(predicted, self.outside)
        hits = true_tag & tf.equal(y_true, predicted)
        counts = [tf.reduce_sum(tf.cast(m, self.dtype)) for m in (hits, predicted_tag, true_tag)]
        self.counts.assign_add(tf.stack(counts))

    def result(self):
        hits, predicted, true = self.counts[0], self.counts[1], self.counts[2]
        return tf.math.divide_no_nan(2.0 * hits, predicted + true)

    def reset_state(self):
        self.counts.assign(tf.zeros_like(self.counts))

    def get_config(self):
        return {**super().get_config(), "outside": self.outside, "ignore": self.ignore}
