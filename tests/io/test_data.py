"""Directory and TFDS datasets: tokenized in graph, labelled by name, bad input."""

import os
import warnings
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from conftest import CLASS_WORDS
from conftest import VOCAB
from conftest import dataset_ops
from conftest import write_class_folders

import keras_adapters as ka
from keras_adapters.io import text_data as data_lib

WORD_CLASS = {w: c for c, ws in CLASS_WORDS.items() for w in ws}


def _examples(ds):
    """[(set of words, label)] decoded from the token ids of every batch."""
    out = []
    for x, y in ds:
        for ids, label in zip(x["token_ids"].numpy(), y.numpy()):
            out.append(({VOCAB[i] for i in ids if i > 4}, int(label)))
    return out


def _assert_labels_match_words(examples, class_names):
    assert examples
    for words, label in examples:
        classes = {WORD_CLASS[w] for w in words if w in WORD_CLASS}
        assert classes == {class_names[label]}, (words, label)


def test_directory_dataset_yields_tokenized_batches(text_folder, tiny_preprocessor):
    ds = ka.text_dataset_from_directory(text_folder, tiny_preprocessor, batch_size=5)
    assert ds.class_names == ["business", "politics", "sport"]
    x, y = next(iter(ds))
    assert set(x) == {"token_ids", "segment_ids", "padding_mask"}
    assert x["token_ids"].shape == (5, 16) and x["token_ids"].dtype == tf.int32
    examples = _examples(ds)
    assert len(examples) == 24
    _assert_labels_match_words(examples, ds.class_names)


def test_no_python_in_the_per_example_path(text_folder, tiny_preprocessor):
    ds = ka.text_dataset_from_directory(text_folder, tiny_preprocessor, bucket_by_sequence_length=True)
    ops = dataset_ops(ds)
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}
    assert {"ParallelMapDatasetV2", "CacheDatasetV2", "PrefetchDataset"} <= ops


def test_validation_split_is_disjoint_and_complete(text_folder, tiny_preprocessor):
    train, val = ka.text_dataset_from_directory(
        text_folder, tiny_preprocessor, batch_size=4, validation_split=0.25, subset="both", seed=3
    )
    a, b = _examples(train), _examples(val)
    assert (len(a), len(b)) == (18, 6)
    assert (train.num_examples, val.num_examples) == (18, 6)
    # Every file exactly once over the two splits (the files' own tokens as the reference).
    def ids(ds):
        return Counter(tuple(row[row > 0]) for x, _ in ds for row in x["token_ids"].numpy())

    files = sorted(text_folder.glob("*/*.txt"))
    tokens = tiny_preprocessor([f.read_text() for f in files])["token_ids"].numpy()
    assert ids(train) + ids(val) == Counter(tuple(row[row > 0]) for row in tokens)
    assert len(ids(val)) >= 5  # the split is not a few repeated texts
    _assert_labels_match_words(a + b, train.class_names)
    # Training data reshuffles every epoch; validation order is fixed.
    first = [sorted(w) for w, _ in _examples(train)]
    second = [sorted(w) for w, _ in _examples(train)]
    assert first != second
    assert _examples(val) == b


def test_labels_map_by_class_name_for_other_folders(tmp_path, tiny_preprocessor):
    # An evaluation folder with a subset of the classes: labels keep the run's order.
    subset = {k: CLASS_WORDS[k] for k in ("politics", "sport")}
    folder = write_class_folders(tmp_path / "eval", subset, per_class=4)
    run_classes = ["sport", "business", "politics"]
    ds = ka.text_dataset_from_directory(folder, tiny_preprocessor, class_names=run_classes, shuffle=False)
    examples = _examples(ds)
    _assert_labels_match_words(examples, run_classes)
    assert {label for _, label in examples} == {0, 2}
    with pytest.raises(ka.DatasetError, match=r"\['sport'\] that the model does not know"):
        ka.text_dataset_from_directory(folder, tiny_preprocessor, class_names=["politics", "business"])


def test_bad_folders_get_clear_errors(tmp_path, tiny_preprocessor):
    load = lambda p: ka.text_dataset_from_directory(p, tiny_preprocessor)  # noqa: E731
    with pytest.raises(ka.DatasetError, match="does not exist"):
        load(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.txt").write_text("team")
    with pytest.raises(ka.DatasetError, match="no class sub-folders"):
        load(tmp_path / "flat")
    one = write_class_folders(tmp_path / "one", {"sport": CLASS_WORDS["sport"]}, per_class=2)
    with pytest.raises(ka.DatasetError, match="single class folder"):
        load(one)
    two = write_class_folders(tmp_path / "two", per_class=2)
    (two / "empty_class").mkdir()
    with pytest.raises(ka.DatasetError, match=r"\['empty_class'\].*contain no .txt files"):
        load(two)


def test_empty_files_are_skipped_with_a_warning(text_folder, tiny_preprocessor):
    (text_folder / "sport" / "empty.txt").write_text("")
    (text_folder / "sport" / "blank.txt").write_text("  \n\t ")
    with pytest.warns(UserWarning, match=r"Skipping 2 empty file\(s\)"):
        ds = ka.text_dataset_from_directory(text_folder, tiny_preprocessor)
    assert len(_examples(ds)) == 24


def test_all_empty_is_an_error(tmp_path, tiny_preprocessor):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "x.txt").write_text("")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ka.DatasetError, match="Every file"):
            ka.text_dataset_from_directory(tmp_path, tiny_preprocessor)


def test_invalid_utf8_is_replaced_not_fatal(text_folder, tiny_preprocessor):
    (text_folder / "sport" / "latin1.txt").write_bytes(b"the team \xff\xfe won the cup \xc3")
    ds = ka.text_dataset_from_directory(text_folder, tiny_preprocessor, shuffle=False)
    examples = _examples(ds)
    assert len(examples) == 25
    assert any({"team", "won", "cup"} <= words for words, _ in examples)
    assert data_lib.clean_text(tf.constant(b"a\xffb")).numpy() == "a\ufffdb".encode()


def test_very_long_files_are_cut_before_tokenizing(text_folder, tiny_preprocessor):
    (text_folder / "sport" / "long.txt").write_text("the team won the cup " * 500_000)  # ~10 MB
    ds = ka.text_dataset_from_directory(text_folder, tiny_preprocessor, batch_size=32, shuffle=False)
    x, y = next(iter(ds))
    assert x["token_ids"].shape[1] == 16
    assert len(_examples(ds)) == 25
    cut = data_lib.clean_text(tf.constant("é" * 10), max_bytes=5).numpy().decode()
    assert cut == "éé\ufffd"  # a character split by the cut is replaced


def test_length_bucketing_trims_padding(tmp_path, tiny_preset):
    import keras_hub

    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(tiny_preset, sequence_length=64)
    folder = write_class_folders(tmp_path / "d", per_class=10)
    (folder / "sport" / "long.txt").write_text("the team won the cup " * 20)
    ds = ka.text_dataset_from_directory(
        folder, preprocessor, batch_size=4, bucket_by_sequence_length=True, bucket_boundaries=(8, 16, 32)
    )
    widths, total = [], 0
    for x, y in ds:
        width = x["token_ids"].shape[1]
        longest = int(x["padding_mask"].numpy().sum(axis=1).max())
        assert width in (8, 16, 32, 64) and longest <= width
        assert width == min(w for w in (8, 16, 32, 64) if w >= longest)
        widths.append(width)
        total += len(y)
    assert total == 31
    assert min(widths) <= 16 and max(widths) == 64
    _assert_labels_match_words(
        [e for e in _examples(ds) if len(e[0]) < 10], ds.class_names
    )


def test_tfds_source_with_mock_data(tiny_preprocessor):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        ds = data_lib.load_text_dataset("tfds:imdb_reviews", tiny_preprocessor, split="train", batch_size=4)
        assert ds.class_names == ["neg", "pos"]
        batches = list(ds)
        assert sum(len(y) for _, y in batches) == 12
        assert batches[0][0]["token_ids"].shape == (4, 16)
        assert set(np.concatenate([y.numpy() for _, y in batches])) <= {0, 1}
        with pytest.raises(ka.DatasetError, match="no feature 'body'"):
            data_lib.load_text_dataset("tfds:imdb_reviews", tiny_preprocessor, text_key="body")


def test_split_directory_is_stratified_and_repeatable(tmp_path):
    source = write_class_folders(tmp_path / "src", per_class=10)
    (source / "sport" / "extra.txt").write_text("the cup")
    train, test = ka.split_directory(source, tmp_path / "out", test_fraction=0.2, seed=1)
    counts = {c: (len(os.listdir(os.path.join(train, c))), len(os.listdir(os.path.join(test, c)))) for c in CLASS_WORDS}
    assert counts == {"business": (8, 2), "politics": (8, 2), "sport": (9, 2)}
    for c in CLASS_WORDS:
        assert not set(os.listdir(os.path.join(train, c))) & set(os.listdir(os.path.join(test, c)))
    again = ka.split_directory(source, tmp_path / "again", test_fraction=0.2, seed=1)
    assert sorted(os.listdir(os.path.join(again[1], "sport"))) == sorted(os.listdir(os.path.join(test, "sport")))
    with pytest.raises(ka.DatasetError, match="already exists"):
        ka.split_directory(source, tmp_path / "out")


@pytest.mark.parametrize("kind", ["missing target", "loop"])
def test_broken_symlinks_are_refused_before_training(text_folder, tiny_preprocessor, kind):
    link = text_folder / "sport" / "linked.txt"
    if kind == "loop":
        os.symlink(link, link)
    else:
        os.symlink(text_folder / "gone.txt", link)
    with pytest.raises(ka.DatasetError, match=r"symbolic links that lead nowhere.*linked\.txt"):
        ka.text_dataset_from_directory(text_folder, tiny_preprocessor)
    link.unlink()
    os.symlink(text_folder / "sport" / sorted(os.listdir(text_folder / "sport"))[0], link)
    assert len(_examples(ka.text_dataset_from_directory(text_folder, tiny_preprocessor))) == 25


def test_a_validation_split_that_holds_no_file_is_an_error(tmp_path, tiny_preprocessor):
    small = write_class_folders(tmp_path / "small", per_class=3)  # 9 files: 0.1 of them is no file
    with pytest.raises(ka.DatasetError, match="validation split of 0.1 of the 9 files .* holds no file"):
        ka.text_dataset_from_directory(small, tiny_preprocessor, validation_split=0.1, subset="both")
    train, val = ka.text_dataset_from_directory(small, tiny_preprocessor, validation_split=0.2, subset="both")
    assert (train.num_examples, val.num_examples) == (8, 1)
