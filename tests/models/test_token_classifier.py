"""AdapterTokenClassifier: per-word tags, entities with offsets, one backbone with other tasks."""

import json

import keras
import numpy as np
import pytest
from conftest import ENTITY_WORDS
from conftest import randomize_adapter_weights

import keras_adapters as ka
from keras_adapters.tasks.token_classification import data as token_data

TAGS = ["O", "B-EVENT", "B-LOC", "B-ORG", "B-PER"]


def _model(preset, method="houlsby", **kwargs):
    return ka.AdapterTokenClassifier.from_preset(
        preset, num_classes=len(TAGS), class_names=TAGS, method=method, sequence_length=16, **kwargs
    )


@pytest.fixture(scope="module")
def trained(token_run):
    from keras_adapters.runs import folder as runs

    run, _ = token_run
    return runs.load_run(run), json.loads((run / "history.json").read_text())


def test_training_learns_the_tags_and_ignores_unlabelled_pieces(trained):
    model, history = trained
    assert history["accuracy"][-1] >= 0.95 and history["tag_f1"][-1] >= 0.9
    entities = model.predict_entities(["the team won the cup", "the market fell"])
    assert [[(e["type"], e["text"]) for e in row] for row in entities] == [
        [("ORG", "team"), ("EVENT", "cup")], [("LOC", "market")]]


def test_entity_offsets_are_characters_of_the_text(trained):
    model, _ = trained
    text = "Ünïcode → the minister, the bank!"
    (entities,) = model.predict_entities([text])
    found = [(e["type"], text[e["start"] : e["end"]]) for e in entities]
    assert ("PER", "minister") in found and ("ORG", "bank") in found  # after multi-byte characters
    assert all(text[e["start"] : e["end"]] == e["text"] for e in entities)
    # Each one-word entity's score is its piece's top tag probability in the
    # model's own raw-text predict (another tokenization path than predict_entities).
    tokens = {k: np.asarray(v) for k, v in model.preprocessor([text]).items()}
    probabilities = model.predict(tokens, verbose=0)[0]
    ids = list(tokens["token_ids"][0])
    vocab = model.preprocessor.tokenizer.get_vocabulary()
    for entity in entities:
        piece = ids.index(vocab.index(entity["text"]))
        np.testing.assert_allclose(entity["score"], probabilities[piece].max(), rtol=1e-5)
    assert model.predict_entities(["", "   "]) == [[], []]
    assert model.predict_entities([]) == []


def test_entities_are_words_read_with_the_chunk_rules(trained):
    model, _ = trained
    words, starts, ends = token_data.split_words(np.array(["the team, won"]))
    assert words[0].numpy().tolist() == [b"the", b"team", b",", b"won"]
    spans = token_data.entity_spans("the team, won", starts[0].numpy(), ends[0].numpy(),
                                    ["O", "B-ORG", "I-ORG", "O"], [1.0, 0.5, 0.7, 1.0])
    assert spans == [{"type": "ORG", "text": "team,", "start": 4, "end": 9, "score": pytest.approx(0.6)}]


def test_raw_texts_go_to_predict_entities(tiny_preset):
    model = _model(tiny_preset)
    with pytest.raises(ValueError, match=r"tags tokens: find entities in texts with model.predict_entities"):
        model.predict(["the team"], verbose=0)


def test_adapter_folders_and_keras_files_keep_the_tagger(trained, tmp_path):
    model, _ = trained
    texts = ["the team won the cup", "the minister and the bank"]
    expected = model.predict_entities(texts)
    model.save_adapter(tmp_path / "tagger")
    config = json.loads((tmp_path / "tagger" / "adapter_config.json").read_text())
    assert config["task"]["type"] == "token_classification" and config["task"]["class_names"] == TAGS
    again = ka.AdapterTokenClassifier.from_adapter(tmp_path / "tagger")
    assert again.predict_entities(texts) == expected
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, ka.AdapterTokenClassifier) and loaded.predict_entities(texts) == expected


def test_one_backbone_carries_a_tagger_and_a_classifier(tiny_preset):
    model = _model(tiny_preset)
    randomize_adapter_weights(model.backbone)
    model.add_adapter("topic", "lora", num_classes=3, task="text_classification")
    assert isinstance(model.heads["default"], ka.TokenClassificationHead)
    assert isinstance(model.heads["topic"], ka.ClassificationHead)
    model.set_active_adapters("topic")
    assert model.predict(["the team won"], verbose=0).shape == (1, 3)
    model.set_active_adapters("default")
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(["the team won"]).items()}
    assert model.predict(tokens, verbose=0).shape == (1, 16, len(TAGS))
    assert set(ENTITY_WORDS.values()) == {t[2:] for t in TAGS[1:]}


def test_a_route_serves_taggers_but_not_mixed_with_classifiers(tiny_preset):
    model = _model(tiny_preset)
    model.add_adapter("topic", "lora", num_classes=3, task="text_classification")
    model.add_adapter("short", "lora", class_names=["O", "B-PER", "I-PER"], task="token_classification")
    randomize_adapter_weights(model.backbone, scale=0.3)
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(["the team won", "the bank fell"]).items()}
    model.set_active_adapters(ka.Route("topic", "default"))
    with pytest.raises(ValueError, match=r"Route serves adapters of one task.*text_classification.*token_classification"):
        model.predict({**tokens, "adapter_id": np.array([1, 0])}, verbose=0)
    alone = {}
    for name in ("default", "short"):
        model.set_active_adapters(name)
        alone[name] = model.predict(tokens, verbose=0)
    model.set_active_adapters(ka.Route("default", "short"))
    routed = model.predict({**tokens, "adapter_id": np.array([1, 0])}, verbose=0)
    assert routed.shape == (2, 16, len(TAGS))
    np.testing.assert_allclose(routed[0, :, :3], alone["short"][0], atol=1e-6)
    assert not routed[0, :, 3:].any()
    np.testing.assert_allclose(routed[1], alone["default"][1], atol=1e-6)


def test_fit_takes_token_inputs_with_ignored_pieces(tiny_preset):
    model = _model(tiny_preset)
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(["the team won", "the bank"]).items()}
    labels = np.where(tokens["padding_mask"], 0, -1)
    labels[:, 0] = -1
    labels[0, 2] = 3  # team: B-ORG
    model.compile()
    history = model.fit(tokens, labels, epochs=1, verbose=0)
    assert {"loss", "accuracy", "tag_f1"} <= set(history.history)
    labels[1, 2] = 7
    with pytest.raises(ValueError, match=r"is outside \[0, 5\)"):
        model.fit(tokens, labels, epochs=1, verbose=0)
