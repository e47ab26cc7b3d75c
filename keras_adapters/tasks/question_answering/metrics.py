"""SQuAD v1.1 exact match and F1 of predicted answers (the official script's definitions).

Answers are normalised as `evaluate-v1.1.py` does (lower case, punctuation
and the articles a/an/the removed, white space collapsed); a question scores
the best over its reference answers; both scores are averaged over questions
and given in 0-100.

Example:
```python
squad_scores({"q1": "the Eiffel Tower"}, {"q1": ["Eiffel Tower", "tower"]})
# {"exact_match": 100.0, "f1": 100.0, "num_examples": 1}
```
"""

import collections
import re
import string

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text):
    text = "".join(c for c in str(text).lower() if c not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction, truth):
    return float(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction, truth):
    predicted, true = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = sum((collections.Counter(predicted) & collections.Counter(true)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions, references):
    """Exact match and F1 (0-100) of `predictions` {id: answer} against
    `references` {id: [answers]}; a question without a prediction scores 0."""
    if not references:
        raise ValueError("No reference answers to score against.")
    scores = {"exact_match": 0.0, "f1": 0.0}
    for key, truths in references.items():
        answer = predictions.get(key, "")
        scores["exact_match"] += max(exact_match(answer, t) for t in truths)
        scores["f1"] += max(f1(answer, t) for t in truths)
    count = len(references)
    return {name: 100.0 * value / count for name, value in scores.items()} | {"num_examples": count}
