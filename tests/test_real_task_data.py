"""The real pair and tagging data (VitaminC, WNUT-16) through our readers and pipelines.

Slow (reads the 358 MB BIG-bench archive): run with `pytest -m slow`.
Training on them is in examples/ and benchmarks/ (BENCHMARKS.md).
"""

import json
import os
import sys
from collections import Counter

import numpy as np
import pytest

import keras_adapters as ka
from keras_adapters import pair_data
from keras_adapters import tasks
from keras_adapters import token_data

pytestmark = pytest.mark.slow
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


@pytest.fixture(scope="module")
def minilm_preprocessor(minilm_preset):
    return ka.AdapterTextClassifier.from_preset(minilm_preset, method=None, sequence_length=64).preprocessor


def test_vitaminc_pairs_read_split_and_tokenize(minilm_preprocessor):
    from bigbench_data import vitaminc_split

    files = vitaminc_split((3000, 10000, 30000))
    assert tasks.detect_task(files["test"]) == tasks.PAIR_CLASSIFICATION
    a, b, labels = pair_data.read_pairs(files["train_3000"])
    assert len(a) == 3000 and set(labels) == {"supports", "refutes", "not enough info"}
    pages = lambda path: {json.loads(line)["text_a"].split(": ", 1)[0] for line in open(path)}  # noqa: E731
    assert not pages(files["train_30000"]) & pages(files["test"])  # split by Wikipedia page
    ds = ka.pair_dataset_from_file(files["test"], minilm_preprocessor, batch_size=64, shuffle=False)
    x, y = next(iter(ds))
    assert (x["segment_ids"].numpy() == 1).any(axis=1).all()  # every row holds its claim
    assert ds.num_examples == 2000 and ds.class_names == ["not enough info", "refutes", "supports"]


def test_wnut16_sentences_keep_one_tag_per_word(minilm_preprocessor):
    from wnut16_data import wnut16_split

    files = wnut16_split()
    assert tasks.detect_task(files["train"]) == tasks.TOKEN_CLASSIFICATION
    sentences, tags = token_data.read_conll(files["test"])
    types = Counter(t[2:] for ts in tags for t in ts if t != "O")
    assert len(sentences) == 479 and len(types) == 10
    ds = ka.token_dataset_from_file(files["test"], minilm_preprocessor, batch_size=64, shuffle=False)
    labelled = np.concatenate([(y.numpy() != -1).sum(axis=1) for _, y in ds])
    assert labelled.tolist() == [min(len(s), 62) for s in ds.sentences]  # 64 less [CLS] and [SEP]
