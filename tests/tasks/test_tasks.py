"""Task names and telling a data source's task from its layout."""

import pytest
from conftest import topic_pairs
from conftest import write_pair_file

from keras_adapters import tasks


def test_task_names_are_the_same_words_in_python_and_the_cli():
    assert tasks.canonical_task("pair-classification") == tasks.PAIR_CLASSIFICATION
    assert tasks.canonical_task("text_classification") == tasks.TEXT_CLASSIFICATION
    assert tasks.cli_name(tasks.QUESTION_ANSWERING) == "question-answering"
    with pytest.raises(ValueError, match="Unknown task 'ner'; the tasks are text-classification, pair-classification"):
        tasks.canonical_task("ner")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_files_with_a_second_text_column_are_pairs(tmp_path, suffix):
    path = write_pair_file(tmp_path / f"p{suffix}", topic_pairs(3))
    assert tasks.detect_task(path) == tasks.PAIR_CLASSIFICATION


def test_folders_and_tfds_are_text_classification(text_folder):
    assert tasks.detect_task(text_folder) == tasks.TEXT_CLASSIFICATION
    assert tasks.detect_task("tfds:imdb_reviews") == tasks.TEXT_CLASSIFICATION


def test_sources_that_cannot_be_told_get_the_formats(tmp_path):
    rows = [{"premise": "a", "hypothesis": "b", "label": "x"}]
    other = write_pair_file(tmp_path / "p.csv", rows, columns=("premise", "hypothesis", "label"))
    with pytest.raises(ValueError, match=r"no 'text_b' column \(its columns: \['hypothesis', 'label', 'premise'\]\)"):
        tasks.detect_task(other)
    assert tasks.detect_task(other, text_b_key="hypothesis") == tasks.PAIR_CLASSIFICATION
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="Cannot tell the task.*a .jsonl, .csv or .tsv file with two text columns"):
        tasks.detect_task(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="does not exist"):
        tasks.detect_task(tmp_path / "missing.jsonl")


def test_conll_and_squad_files_are_told(tmp_path):
    from conftest import write_conll

    assert tasks.detect_task(write_conll(tmp_path / "ner.txt", count=3)) == tasks.TOKEN_CLASSIFICATION
    (tmp_path / "tags.tsv").write_text("-DOCSTART- O\n\nNew\tB-geo-loc\nYork\tI-geo-loc\n")
    assert tasks.detect_task(tmp_path / "tags.tsv") == tasks.TOKEN_CLASSIFICATION
    (tmp_path / "dev.json").write_text('{"version": "1.1", "data": [{"title": "t", "paragraphs": []}]}')
    assert tasks.detect_task(tmp_path / "dev.json") == tasks.QUESTION_ANSWERING


def test_a_conll_file_with_a_bad_line_is_named_by_line(tmp_path):
    lines = ["New\tB-geo-loc", "York\tI-geo-loc", "", "the\tO", "cup\tB-event", "Paris B-geo-loc extra-stuff-"]
    (tmp_path / "ner.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"ner.txt:6: 'Paris B-geo-loc extra-stuff-' is not 'word<TAB>tag'"):
        tasks.detect_task(tmp_path / "ner.txt")
    (tmp_path / "bom.txt").write_bytes("\ufeff".encode() + "New\tB-geo-loc\n".encode())
    assert tasks.detect_task(tmp_path / "bom.txt") == tasks.TOKEN_CLASSIFICATION
