"""Heads that start at the training labels' frequencies (`class_prior`).

Why it exists: with a zero bias, adapters on imbalanced tags (WNUT-16: `O`
is 95% of the words) spend training learning how rare each tag is and
collapse to `O` (BENCHMARKS.md, tagging). Each check here is against an
independent count of the data or a float64 computation.
"""

import collections
import json

import keras
import numpy as np
import pytest
from conftest import CLASS_WORDS
from conftest import topic_pairs
from conftest import write_class_folders
from conftest import write_conll
from conftest import write_pair_file

import keras_adapters as ka
from keras_adapters.tasks.classification import ClassificationHead
from keras_adapters.tasks.multi_label_classification import MultiLabelHead
from keras_adapters.tasks.token_classification import TokenClassificationHead

HIDDEN = 8


def _outputs_on_zero_features(head, tokens=3):
    """What the head predicts when every token vector is 0: its bias alone."""
    sequence = np.zeros((2, tokens, HIDDEN), "float32")
    return np.asarray(head(sequence, np.zeros((2, HIDDEN), "float32"), np.ones((2, tokens), bool)))


@pytest.mark.parametrize("make", [
    lambda: ClassificationHead(4),
    lambda: ClassificationHead(4, task="pair_classification"),
    lambda: TokenClassificationHead(4),
])
def test_a_softmax_head_started_from_a_prior_predicts_it(make):
    counts = np.array([950.0, 30.0, 15.0, 5.0])
    head = make()
    head.build(HIDDEN)
    head.start_from_prior(counts)  # counts or shares: normalised
    predicted = _outputs_on_zero_features(head).reshape(-1, 4)
    np.testing.assert_allclose(predicted, np.broadcast_to(counts / counts.sum(), predicted.shape), rtol=1e-5)


def test_a_multi_label_head_started_from_a_prior_gives_each_label_its_rate():
    rates = np.array([0.02, 0.5, 0.9])
    head = MultiLabelHead(3)
    head.build(HIDDEN)
    head.start_from_prior(rates)
    np.testing.assert_allclose(_outputs_on_zero_features(head), np.broadcast_to(rates, (2, 3)), rtol=1e-5)


@pytest.mark.parametrize("make, prior", [
    (lambda: ClassificationHead(3), [0.5, 0.5]),  # one per class
    (lambda: ClassificationHead(3), [0.5, 0.5, 0.0]),  # log(0)
    (lambda: TokenClassificationHead(3), [0.5, -0.1, 0.6]),
    (lambda: TokenClassificationHead(3), [0.5, float("nan"), 0.6]),
    (lambda: MultiLabelHead(2), [0.5, 1.0]),  # a rate of 1 has no finite logit
])
def test_bad_priors_are_refused_naming_what_a_prior_is(make, prior):
    head = make()
    head.build(HIDDEN)
    before = np.asarray(head.logits.bias).copy()
    with pytest.raises(ValueError, match="class_prior must be"):
        head.start_from_prior(prior)
    np.testing.assert_array_equal(np.asarray(head.logits.bias), before)


def _tags_of(path):
    return [line.split("\t")[1].strip() for line in open(path) if "\t" in line]


def test_a_tagging_dataset_carries_its_words_tag_shares(tmp_path, tiny_preprocessor):
    path = write_conll(tmp_path / "x.conll", count=40)
    ds = ka.token_dataset_from_file(path, tiny_preprocessor, shuffle=False)
    counts = collections.Counter(_tags_of(path))
    expected = [(counts[t] + 1) / (sum(counts.values()) + len(ds.tag_names)) for t in ds.tag_names]
    np.testing.assert_allclose(ds.class_prior, expected)


def test_the_training_part_of_a_split_counts_its_own_rows(tmp_path, tiny_preprocessor):
    path = write_conll(tmp_path / "x.conll", count=40)
    train, validation = ka.token_dataset_from_file(
        path, tiny_preprocessor, validation_split=0.25, subset="both", seed=3, shuffle=False
    )
    for part in (train, validation):
        counts = collections.Counter(t for sentence in part.tags for t in sentence)
        expected = [(counts[t] + 1) / (sum(counts.values()) + len(part.tag_names)) for t in part.tag_names]
        np.testing.assert_allclose(part.class_prior, expected)
    assert train.class_prior != validation.class_prior


def test_folder_pair_and_multi_label_datasets_carry_their_shares(tmp_path, tiny_preprocessor):
    folder = write_class_folders(tmp_path / "texts", per_class=6)
    for extra in range(4):  # business: 10 files, the others 6
        (folder / "business" / f"x{extra}.txt").write_text("the stocks today")
    sizes = {name: 10 if name == "business" else 6 for name in CLASS_WORDS}
    total = sum(sizes.values())
    plain = ka.text_dataset_from_directory(folder, tiny_preprocessor, shuffle=False)
    train, _ = ka.text_dataset_from_directory(folder, tiny_preprocessor, validation_split=0.25, subset="both", seed=2)
    for ds in (plain, train):  # a folder's shares, split or not (a random split differs by sampling only)
        np.testing.assert_allclose(ds.class_prior, [(sizes[n] + 1) / (total + len(sizes)) for n in ds.class_names])

    rows = topic_pairs(30)
    pairs = ka.pair_dataset_from_file(write_pair_file(tmp_path / "p.jsonl", rows), tiny_preprocessor, shuffle=False)
    counts = collections.Counter(r["label"] for r in rows)
    np.testing.assert_allclose(pairs.class_prior, [(counts[n] + 1) / (30 + len(pairs.class_names))
                                                   for n in pairs.class_names])

    texts = [("a goal", ["sport"]), ("stocks", ["business"]), ("a match", ["sport"]), ("news", [])]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps({"text": t, "labels": labels}) + "\n" for t, labels in texts))
    labelled = ka.multi_label_dataset(path, tiny_preprocessor, shuffle=False)
    assert labelled.class_names == ["business", "sport"]
    np.testing.assert_allclose(labelled.class_prior, [(1 + 1) / (4 + 2), (2 + 1) / (4 + 2)])


def test_models_take_the_prior_for_their_first_and_added_heads(tiny_preset):
    prior = [0.7, 0.2, 0.1]
    model = ka.AdapterTokenClassifier.from_preset(
        tiny_preset, num_classes=3, class_names=["O", "B-X", "I-X"], method="lora", sequence_length=8,
        class_prior=prior,
    )
    np.testing.assert_allclose(keras.ops.softmax(model.heads["default"].logits.bias), prior, rtol=1e-5)
    model.add_adapter("topic", "houlsby", num_classes=2, task="text_classification", class_prior=[1, 3])
    np.testing.assert_allclose(keras.ops.softmax(model.heads["topic"].logits.bias), [0.25, 0.75], rtol=1e-5)
    model.add_adapter("plain", "houlsby", num_classes=2, task="text_classification")
    np.testing.assert_array_equal(np.asarray(model.heads["plain"].logits.bias), [0.0, 0.0])
    before = model.get_config()
    with pytest.raises(ValueError, match="question_answering head has no classes"):
        model.add_adapter("reader", "lora", task="question_answering", class_prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="class_prior must be 2 positive numbers"):
        model.add_adapter("short", "lora", num_classes=2, task="text_classification", class_prior=[1.0])
    assert model.adapter_names == ["default", "topic", "plain"] and set(model.heads) == set(model.adapter_names)
    assert model.get_config() == before  # nothing half-added: the refused names are free again
    model.add_adapter("reader", "lora", task="question_answering")


def test_a_prior_without_a_head_to_start_is_refused(tiny_preset):
    with pytest.raises(ValueError, match="no adapter"):
        ka.AdapterTextClassifier.from_preset(tiny_preset, method=None, sequence_length=8, class_prior=[0.5, 0.5])
    with pytest.raises(ValueError, match="question_answering head has no classes"):
        ka.AdapterQuestionAnswerer.from_preset(tiny_preset, method="lora", sequence_length=16, class_prior=[0.5, 0.5])


def test_training_runs_start_the_head_at_the_training_tags_shares(tmp_path, tiny_preset, tiny_preprocessor):
    path = write_conll(tmp_path / "x.conll", count=40)
    seen = {}

    class StartingBias(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            head = self.model.output_head
            seen["names"], seen["bias"] = head.label_names(), np.asarray(head.logits.bias)

    ka.train_classifier(
        path, tmp_path / "run", preset=tiny_preset, method="houlsby", epochs=1, batch_size=8,
        sequence_length=16, validation_split=0.25, seed=5, precision="float32", tensorboard=False, verbose=0,
        callbacks=[StartingBias()],
    )
    # The training part's words only: the run holds out the same seeded sentences.
    train, _ = ka.token_dataset_from_file(path, tiny_preprocessor, validation_split=0.25, subset="both", seed=5)
    counts = collections.Counter(t for sentence in train.tags for t in sentence)
    shares = np.array([counts[t] + 1.0 for t in seen["names"]])
    np.testing.assert_allclose(keras.ops.softmax(seen["bias"]), shares / shares.sum(), rtol=1e-5)
    whole = collections.Counter(_tags_of(path))
    assert not np.allclose(shares / shares.sum(), [(whole[t] + 1.0) / (sum(whole.values()) + len(whole))
                                                   for t in seen["names"]], rtol=1e-3)
