"""Entity-level P/R/F1: the conlleval / seqeval chunk rules, checked by hand."""

import pytest

from keras_adapters.tasks.token_classification.metrics import entities
from keras_adapters.tasks.token_classification.metrics import entity_report


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
        (["B-PER", "B-PER"], [("PER", 0, 0), ("PER", 1, 1)]),
        (["O", "I-PER", "I-PER"], [("PER", 1, 2)]),  # I after O starts an entity (conlleval)
        (["B-PER", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 1)]),  # a change of type ends one
        (["S-LOC", "B-ORG", "I-ORG", "E-ORG", "O"], [("LOC", 0, 0), ("ORG", 1, 3)]),  # IOBES
        (["B-creative-work", "I-creative-work"], [("creative-work", 0, 1)]),  # WNUT's dashed type
        (["O", "O"], []),
    ],
)
def test_entities_follow_the_chunk_rules(tags, expected):
    assert entities(tags) == expected


def test_report_counts_exact_spans_only_per_sentence():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "B-ORG"]]
    report = entity_report(true, predicted)
    # true: PER(0-1), LOC(3), LOC(0) of sentence 2; predicted: PER(0-0) (wrong end), LOC, LOC, ORG.
    assert report["precision"] == pytest.approx(2 / 4)
    assert report["recall"] == pytest.approx(2 / 3)
    assert report["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert report["per_type"]["LOC"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert report["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_type"]["ORG"]["support"] == 0 and report["num_examples"] == 2
    # An entity may not run across sentences.
    assert entity_report([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])["per_type"]["PER"]["support"] == 2


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="Sentence 0 has 2 true tags but 1 predicted"):
        entity_report([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="1 true sentences but 0 predicted"):
        entity_report([["O"]], [])
