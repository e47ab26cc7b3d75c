"""CoNLL files: sentences, first-word-piece labels in graph, bad lines named."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import VOCAB

import keras_adapters as ka
from keras_adapters.tasks.token_classification import data as token_data

CONLL = (
    "-DOCSTART- O\n\n"
    "the\tO\nteam\tB-ORG\nwon\tO\n\u200b\tO\ncup\tB-EVENT\n\n\n"
    "stocks O\nfell O\nmarket B-LOC\nmarket I-LOC\nbank I-LOC\nprofit O\nvote O\nparty B-ORG\n"
)


@pytest.fixture
def conll_file(tmp_path):
    path = tmp_path / "tags.conll"
    path.write_text(CONLL)
    return path


def test_sentences_and_tags_are_read(conll_file):
    sentences, tags = token_data.read_conll(conll_file)
    assert sentences == [["the", "team", "won", "\u200b", "cup"],
                         ["stocks", "fell", "market", "market", "bank", "profit", "vote", "party"]]
    assert tags[1] == ["O", "O", "B-LOC", "I-LOC", "I-LOC", "O", "O", "B-ORG"]
    assert token_data.tag_order(tags) == ["O", "B-EVENT", "B-LOC", "I-LOC", "B-ORG"]
    words, none = token_data.read_conll(conll_file, tagged=False)
    assert words == sentences and none is None


def test_labels_sit_on_first_word_pieces(conll_file):
    import keras_hub

    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB + ["##s"], lowercase=True)
    labeller = token_data.WordPieceLabeller(tokenizer, 12)
    # "teams" -> "team", "##s": one word, two pieces; the zero-width word -> [UNK].
    words = tf.constant(["the", "teams", "\u200b", "cup"])
    inputs, labels = tf.function(labeller)(words, tf.constant([0, 4, 0, 1]))  # it runs inside tf.data
    pieces = [tokenizer.id_to_token(int(i)) for i in inputs["token_ids"].numpy() if i]
    assert pieces == ["[CLS]", "the", "team", "##s", "[UNK]", "cup", "[SEP]"]
    assert labels.numpy().tolist() == [-1, 0, 4, -1, 0, 1, -1, -1, -1, -1, -1, -1]
    assert inputs["padding_mask"].numpy().sum() == 7


@pytest.mark.slow  # ~38 s: keeps the default run under 15 minutes (CI runs it with -m slow)
def test_datasets_split_and_map_back_to_words(conll_file, tiny_preprocessor):
    ds = ka.token_dataset_from_file(conll_file, tiny_preprocessor, batch_size=2, shuffle=False)
    (x, y), = list(ds)
    assert x["token_ids"].shape == (2, 16) and y.shape == (2, 16)
    # Each word has exactly one labelled piece: perfect scores give back the file's tags.
    for row, (sentence, tags) in enumerate(zip(ds.sentences, ds.tags)):
        one_hot = np.eye(len(ds.tag_names))[np.maximum(y[row].numpy(), 0)]
        assert token_data.word_tags(one_hot, y[row].numpy(), len(sentence), ds.tag_names) == tags
    train, val = ka.token_dataset_from_file(conll_file, tiny_preprocessor, validation_split=0.5, subset="both", seed=1)
    assert (train.num_examples, val.num_examples) == (1, 1)
    assert sorted(map(tuple, train.sentences + val.sentences)) == sorted(map(tuple, ds.sentences))


def test_long_sentences_are_cut_and_their_tail_predicted_o(tmp_path, tiny_preprocessor):
    path = tmp_path / "long.conll"
    path.write_text("".join(f"team\t{'B-ORG' if i == 20 else 'O'}\n" for i in range(30)))
    ds = ka.token_dataset_from_file(path, tiny_preprocessor, shuffle=False)
    (x, y), = list(ds)
    assert int((y[0].numpy() != -1).sum()) == 14  # 16 positions less [CLS] and [SEP]
    tags = token_data.word_tags(np.ones((16, 2)), y[0].numpy(), 30, ["O", "B-ORG"])
    assert len(tags) == 30 and tags[14:] == ["O"] * 16


def test_bad_files_name_the_file_and_line(tmp_path, conll_file, tiny_preprocessor):
    cases = {
        "one.conll": ("the\tO\nteam\n", ":2: 'team' is not 'word<TAB>tag'"),
        "tag.conll": ("the\tO\nteam\tORG\n", ":2: tag 'ORG' is not BIO or IOBES"),
        "empty.conll": ("\n-DOCSTART- O\n\n", "holds no sentence"),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ka.DatasetError) as info:
            token_data.read_conll(tmp_path / name)
        assert expected in str(info.value) and name in str(info.value)
    with pytest.raises(ka.DatasetError, match=r"tag\(s\) \['B-EVENT'\] that the model does not know"):
        ka.token_dataset_from_file(conll_file, tiny_preprocessor, tag_names=["O", "B-LOC", "I-LOC", "B-ORG"])
    (tmp_path / "plain.conll").write_text("the\tO\nteam\tO\n\nwon\tO\n")
    with pytest.raises(ka.DatasetError, match=r"plain.conll has no entity tags: every word is tagged O"):
        ka.token_dataset_from_file(tmp_path / "plain.conll", tiny_preprocessor)


GRAPH_CASES = [
    ("the team won the cup", ["O", "B-ORG", "O", "O", "B-EVENT"]),
    ("bank market cup team", ["O", "I-LOC", "I-LOC", "B-ORG"]),  # I after O starts an entity
    ("Ünïcode → team bank, cup!", ["O", "O", "B-ORG", "I-LOC", "O", "S-EVENT", "O"]),  # type change
    ("", []),
    ("team bank cup market stocks " * 4, ["B-ORG", "E-ORG", "S-LOC"] * 6 + ["O", "O"]),  # cut off at 14 words
]
GRAPH_TAGS = ["O", "B-EVENT", "S-EVENT", "B-LOC", "I-LOC", "S-LOC", "B-ORG", "I-ORG", "E-ORG"]


def test_graph_entities_match_the_python_reading(tiny_preprocessor):
    reader = token_data.GraphEntities(tiny_preprocessor.tokenizer, 16, GRAPH_TAGS)
    texts = tf.constant([t for t, _ in GRAPH_CASES])
    starts, ends, inputs, labels = tf.function(reader.inputs)(texts)  # as the SavedModel traces it
    probabilities = np.full(labels.shape + (len(GRAPH_TAGS),), 0.01, "float32")
    expected = []
    for row, (text, tags) in enumerate(GRAPH_CASES):
        positions = np.flatnonzero(labels[row].numpy() != -1)
        for word, position in enumerate(positions):  # the model "predicts" the listed tags
            probabilities[row, position, GRAPH_TAGS.index(tags[word])] = 0.9 - 0.01 * word
        kept, scores = tags[: len(positions)], [0.9 - 0.01 * w for w in range(len(positions))]
        kept += ["O"] * (len(tags) - len(kept))
        scores += [0.0] * (len(tags) - len(scores))
        expected.append(token_data.entity_spans(text, starts[row].numpy(), ends[row].numpy(), kept, scores))
    assert len(np.flatnonzero(labels[4].numpy() != -1)) == 14  # the long text is cut
    got = tf.function(reader)(texts, tf.constant(probabilities), starts, ends, labels)
    for row, spans in enumerate(expected):
        count = int(got["num_entities"][row])
        assert count == len(spans)
        rebuilt = [
            {"type": got["entity_type"][row, i].numpy().decode(), "text": got["entity_text"][row, i].numpy().decode(),
             "start": int(got["start"][row, i]), "end": int(got["end"][row, i]),
             "score": pytest.approx(float(got["score"][row, i]))}
            for i in range(count)
        ]
        assert rebuilt == spans, row
    assert [len(s) for s in expected] == [2, 2, 3, 0, 9]  # 14 words kept: 4 x (ORG, LOC) + ORG
