"""Pair files (JSONL, CSV, TSV): read alike, tokenized in graph as `[CLS] a [SEP] b [SEP]`, bad files named."""

import json
import warnings

import numpy as np
import pytest
from conftest import VOCAB
from conftest import dataset_ops
from conftest import topic_pairs
from conftest import write_pair_file

import keras_adapters as ka
from keras_adapters.tasks import pair_classification as pair_data


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv"])
def test_the_three_formats_read_the_same_pairs(tmp_path, suffix):
    rows = topic_pairs(10)
    rows[0]["text_a"] = 'a "quoted", comma text'  # CSV quotes it; TSV keeps the quotes as they are
    path = write_pair_file(tmp_path / f"pairs{suffix}", rows)
    a, b, labels = pair_data.read_pairs(path)
    assert a == [r["text_a"] for r in rows]
    assert b == [r["text_b"] for r in rows]
    assert labels == [r["label"] for r in rows]


def test_other_column_names(tmp_path):
    rows = [{"premise": r["text_a"], "hypothesis": r["text_b"], "gold": r["label"]} for r in topic_pairs(4)]
    path = write_pair_file(tmp_path / "p.csv", rows, columns=("premise", "hypothesis", "gold"))
    a, b, labels = pair_data.read_pairs(path, text_a_key="premise", text_b_key="hypothesis", label_key="gold")
    assert (a[0], b[0], labels[0]) == (rows[0]["premise"], rows[0]["hypothesis"], rows[0]["gold"])


def _decode(ids, segments):
    """The words of segment 0 and segment 1 (special tokens kept) of one row."""
    words = [VOCAB[i] for i in ids if i]
    return words, list(segments[: len(words)])


def test_pairs_are_packed_with_segment_ids(pair_file, tiny_preprocessor):
    rows = [json.loads(line) for line in open(pair_file)]
    ds = ka.pair_dataset_from_file(pair_file, tiny_preprocessor, batch_size=4, shuffle=False)
    x, y = next(iter(ds))
    for i in range(4):
        a, b = rows[i]["text_a"].split(), rows[i]["text_b"].split()
        words, segments = _decode(x["token_ids"][i].numpy(), x["segment_ids"][i].numpy())
        assert words == ["[CLS]", *a, "[SEP]", *b, "[SEP]"]
        assert segments == [0] * (len(a) + 2) + [1] * (len(b) + 1)
        assert ds.class_names[int(y[i])] == rows[i]["label"]
    assert x["padding_mask"].numpy().sum(axis=1).tolist() == [
        len(r["text_a"].split()) + len(r["text_b"].split()) + 3 for r in rows[:4]
    ]


def test_long_pairs_are_truncated_longest_first(tmp_path, tiny_preprocessor):
    path = write_pair_file(
        tmp_path / "p.jsonl", [{"text_a": " ".join(["team"] * 30), "text_b": "the cup", "label": "x"},
                               {"text_a": "a", "text_b": "b", "label": "y"}]
    )
    x, _ = next(iter(ka.pair_dataset_from_file(path, tiny_preprocessor, shuffle=False)))
    words, segments = _decode(x["token_ids"][0].numpy(), x["segment_ids"][0].numpy())
    assert len(words) == 16  # the preprocessor's sequence_length
    assert words[-3:] == ["the", "cup", "[SEP]"]  # the short text is kept whole
    assert segments.count(1) == 3


def test_no_python_in_the_per_example_path(pair_file, tiny_preprocessor):
    ds = ka.pair_dataset_from_file(pair_file, tiny_preprocessor, bucket_by_sequence_length=True)
    ops = dataset_ops(ds)
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}


def test_validation_split_is_disjoint_complete_and_repeatable(pair_file, tiny_preprocessor):
    def rows(ds):
        return sorted(tuple(r) for x, _ in ds for r in x["token_ids"].numpy().tolist())

    train, val = ka.pair_dataset_from_file(pair_file, tiny_preprocessor, validation_split=0.25, subset="both", seed=3)
    again, _ = ka.pair_dataset_from_file(pair_file, tiny_preprocessor, validation_split=0.25, subset="both", seed=3)
    everything = ka.pair_dataset_from_file(pair_file, tiny_preprocessor, shuffle=False)
    assert (train.num_examples, val.num_examples) == (36, 12)
    assert sorted(rows(train) + rows(val)) == rows(everything)
    assert rows(train) == rows(again)
    assert len(rows(val)) == 12


def test_labels_are_mapped_by_name_and_integers_sort_numerically(tmp_path, tiny_preprocessor):
    rows = [{"text_a": "a", "text_b": "b", "label": label} for label in (10, 2, 1, 2)]
    path = write_pair_file(tmp_path / "p.jsonl", rows)
    ds = ka.pair_dataset_from_file(path, tiny_preprocessor, shuffle=False)
    assert ds.class_names == ["1", "2", "10"]
    assert [int(v) for _, y in ds for v in y.numpy()] == [2, 1, 0, 1]
    other = ka.pair_dataset_from_file(path, tiny_preprocessor, shuffle=False, class_names=["10", "2", "1", "7"])
    assert [int(v) for _, y in other for v in y.numpy()] == [0, 1, 2, 1]


def _error(path, **kwargs):
    with pytest.raises(ka.DatasetError) as info:
        pair_data.read_pairs(path, **kwargs)
    return str(info.value)


def test_bad_files_name_the_file_and_line(tmp_path):
    good = json.dumps({"text_a": "a", "text_b": "b", "label": "x"})
    cases = {
        "json.jsonl": (f"{good}\n{{not json\n", ":2: not a JSON object"),
        "list.jsonl": (f"{good}\n\n[1, 2]\n", ":3: a JSON list"),
        "key.jsonl": (f'{good}\n{{"text_a": "a", "label": "x"}}\n', ":2: no 'text_b' field"),
        "fields.csv": ("text_a,text_b,label\na,b,x\na,b,c,x\n", ":3: 4 field(s), but the header names 3"),
        "label.tsv": ("text_a\ttext_b\tlabel\na\tb\t \n", ":2: the 'label' field is empty"),
        "empty.csv": ("", "is empty; it needs a header row"),
        "pairs.txt": ("a b\n", "not '.txt'"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        message = _error(path)
        assert expected in message, (name, message)
        assert name in message
    assert "text_b_key=" in _error(tmp_path / "key.jsonl")
    assert "does not exist" in _error(tmp_path / "missing.jsonl")


def test_unknown_labels_and_single_label_files_are_refused(tmp_path, pair_file, tiny_preprocessor):
    with pytest.raises(ka.DatasetError, match=r"label\(s\) \['business'\] that the model does not know"):
        ka.pair_dataset_from_file(pair_file, tiny_preprocessor, class_names=["politics", "sport"])
    one = write_pair_file(tmp_path / "one.jsonl", [{"text_a": "a", "text_b": "b", "label": "x"}] * 3)
    with pytest.raises(ka.DatasetError, match="single label"):
        ka.pair_dataset_from_file(one, tiny_preprocessor)


def test_records_with_an_empty_text_are_skipped_with_a_warning(tmp_path):
    rows = topic_pairs(5)
    rows[1]["text_b"] = "  "
    path = write_pair_file(tmp_path / "p.jsonl", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a, _, _ = pair_data.read_pairs(path)
    assert len(a) == 4
    assert any("Skipping 1 record(s)" in str(w.message) and "line 2" in str(w.message) for w in caught)


def test_invalid_utf8_and_unlabelled_files_are_read(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_bytes(b"text_a\ttext_b\nbad \xff byte\tfine\n")
    a, b, labels = pair_data.read_pairs(path, labelled=False)
    assert a == ["bad \ufffd byte"] and b == ["fine"] and labels is None
    assert np.all([isinstance(t, str) for t in a + b])


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0, 1, 1.0, 0.0], r"the 'label' field is 1.0 \(float\)"),
        ([0, 1, True], r"the 'label' field is true \(bool\)"),
        (["entail", ["entail"]], r"the 'label' field is \[\"entail\"\] \(list\)"),
        (["entail", None], r"the 'label' field is null"),
        (["1", 0, 1], r"mixes numbers and strings as labels \(line 2: 0; line 1: \"1\"\)"),
    ],
)
def test_labels_of_other_kinds_are_refused_not_made_classes(tmp_path, labels, message):
    rows = [{"text_a": "a", "text_b": "b", "label": label} for label in labels]
    path = write_pair_file(tmp_path / "p.jsonl", rows)
    assert "p.jsonl" in _error(path)
    with pytest.raises(ka.DatasetError, match=message):
        pair_data.read_pairs(path)


def test_one_label_written_two_ways_in_a_csv_is_refused(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("text_a,text_b,label\na,b,1\na,b,0\na,b,1.0\n")
    with pytest.raises(ka.DatasetError, match=r"writes one label two ways: '1' \(line 2\) and '1.0' \(line 4\)"):
        pair_data.read_pairs(path)


def test_fields_over_128_kb_and_byte_order_marks_are_read(tmp_path):
    long = "word " * 60_000  # 300 KB: beyond the csv module's default field limit
    path = tmp_path / "p.csv"
    path.write_text(f'text_a,text_b,label\n"{long}",b,x\na,b,y\n')
    a, _, labels = pair_data.read_pairs(path)
    assert a[0] == long and labels == ["x", "y"]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes("\ufeff".encode() + json.dumps({"text_a": "a", "text_b": "b", "label": "x"}).encode() + b"\n")
    assert pair_data.read_pairs(bom) == (["a"], ["b"], ["x"])
    from keras_adapters import tasks

    assert tasks.detect_task(bom) == tasks.PAIR_CLASSIFICATION


def test_unlabelled_records_with_an_empty_text_are_kept_in_order(tmp_path):
    path = write_pair_file(tmp_path / "p.jsonl", [{"text_a": a, "text_b": b} for a, b in
                                                  (("a", "b"), ("", "c"), ("d", " "))], columns=("text_a", "text_b"))
    assert pair_data.read_pairs(path, labelled=False) == (["a", "", "d"], ["b", "c", " "], None)
