"""The real pair, tagging and SQuAD data (VitaminC, WNUT-16, SQuAD v1.1) through our readers and pipelines.

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
from keras_adapters.tasks import pair_classification as pair_data
from keras_adapters import tasks
from keras_adapters.tasks.token_classification import data as token_data

pytestmark = pytest.mark.slow
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))


@pytest.fixture(scope="module")
def minilm_preprocessor(minilm_preset):
    return ka.AdapterTextClassifier.from_preset(minilm_preset, method=None, sequence_length=64).preprocessor


def test_vitaminc_pairs_read_split_and_tokenize(minilm_preprocessor, bigbench_data):
    files = bigbench_data.vitaminc_split((3000, 10000, 30000))
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


def test_squad_answers_lie_whole_in_a_labelled_window(minilm_preset, bigbench_data):
    """Every test answer of the real SQuAD split, at the benchmark's windows
    (256 tokens sharing 96), is what its labelled tokens' offsets cut out of
    the context: word-aligned answers exactly, the rest within whole words."""
    from keras_adapters.tasks.question_answering import data as qa_data

    files = bigbench_data.squad_split(train_size=3000, test_size=600)
    assert tasks.detect_task(files["test"]) == tasks.QUESTION_ANSWERING
    train, test = qa_data.read_squad(files["train"]), qa_data.read_squad(files["test"])
    assert (len(train), len(test)) == (3000, 600)
    assert not {e["title"] for e in train} & {e["title"] for e in test}  # split by article
    preprocessor = ka.AdapterTextClassifier.from_preset(minilm_preset, method=None, sequence_length=256).preprocessor
    windows = qa_data.QuestionWindows(preprocessor.tokenizer, 256, stride=96)
    exact, spans = 0, {}
    for inputs, labels, offsets in qa_data.window_dataset(test, windows, with_offsets=True).batch(256):
        for (s, e), starts, ends, row in zip(labels.numpy(), offsets["starts"].numpy(), offsets["ends"].numpy(),
                                            offsets["example"].numpy()):
            if s > 0:
                spans.setdefault(row, set()).add((starts[s], ends[e]))
    for row, example in enumerate(test):
        (span,) = spans[row]  # every answer whole in a window, the same span in each
        answer = example["answers"][0]
        begin, end = qa_data.byte_span(example["context"], answer)
        raw = example["context"].encode()
        assert span[0] <= begin and span[1] >= end, (raw[span[0] : span[1]], answer)
        exact += span == (begin, end)
    assert exact / len(test) > 0.95  # answers that do not end at a word boundary are rare
