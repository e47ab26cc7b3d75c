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
