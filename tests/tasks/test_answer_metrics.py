"""SQuAD v1.1 exact match and F1, checked by hand against the official definitions."""

import pytest

from keras_adapters.tasks.question_answering.metrics import exact_match
from keras_adapters.tasks.question_answering.metrics import f1
from keras_adapters.tasks.question_answering.metrics import normalize_answer
from keras_adapters.tasks.question_answering.metrics import squad_scores


def test_normalisation_drops_case_punctuation_and_articles():
    assert normalize_answer("The  Eiffel-Tower, (Paris)!") == "eiffeltower paris"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    assert normalize_answer("theatre") == "theatre"  # only whole-word articles


def test_scores_take_the_best_reference_per_question():
    assert exact_match("the Eiffel Tower", "Eiffel Tower") == 1.0
    # "eiffel tower in paris" against "eiffel tower": 2 words in common, precision 2/4, recall 1
    assert f1("Eiffel Tower in Paris", "the Eiffel Tower") == pytest.approx(2 * 0.5 / 1.5)
    assert f1("", "tower") == 0.0
    scores = squad_scores(
        {"q1": "Eiffel Tower in Paris", "q2": "1889"},
        {"q1": ["tower", "Eiffel Tower in Paris"], "q2": ["in 1889"], "q3": ["missing"]},
    )
    assert scores["exact_match"] == pytest.approx(100 * 1 / 3)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 * 1 * 0.5 / 1.5 + 0) / 3)
    assert scores["num_examples"] == 3
    with pytest.raises(ValueError, match="No reference answers"):
        squad_scores({}, {})
