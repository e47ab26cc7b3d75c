"""SQuAD files, question windows, labels and answer spans (`keras_adapters.tasks.question_answering.data`)."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf
from conftest import dataset_ops
from conftest import squad_records
from conftest import write_squad

import keras_adapters as ka
from keras_adapters.tasks.question_answering import data as qa_data

CONTEXT = "the team won the cup . great award for the film star today"


@pytest.fixture(scope="module")
def preprocessor(tiny_preset):
    import keras_hub

    return keras_hub.models.TextClassifierPreprocessor.from_preset(tiny_preset, sequence_length=16)


def _windows(preprocessor, stride=2, max_question_length=4):
    return qa_data.QuestionWindows(preprocessor.tokenizer, 16, stride, max_question_length)


def _run(windows, question, context, answer=None):
    start, end = qa_data.byte_span(context, answer) if answer else (-1, -1)
    inputs, labels, offsets = tf.function(windows)(tf.constant(question), tf.constant(context), start, end)
    return {k: v.numpy() for k, v in {**inputs, **offsets, "labels": labels}.items()}


def test_squad_files_are_read_with_offsets_checked(tmp_path):
    context = "Paris is in France."
    document = {"data": [{"title": "P", "paragraphs": [{"context": context, "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": " France", "answer_start": 11}]},
        {"id": "b", "question": "What?", "answers": [{"text": "Paris", "answer_start": 0}]},
    ]}]}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(document))
    examples = qa_data.read_squad(path)
    assert [e["id"] for e in examples] == ["a", "b"]
    # SQuAD's dev set has answers with a leading space and an offset one off: found where they are.
    assert examples[0]["answers"] == [{"text": "France", "answer_start": 12}]
    assert context[12:18] == "France"
    assert examples[1]["title"] == "P" and examples[1]["context"] == context


def _with_answers(records, answers):
    changed = json.loads(json.dumps(records))
    changed["data"][0]["paragraphs"][0]["qas"][0]["answers"] = answers
    return changed


def test_bad_squad_files_name_the_file_and_the_problem(tmp_path):
    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    good = squad_records(2)
    missing_answer = json.loads(json.dumps(good))
    missing_answer["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []
    wrong_offset = json.loads(json.dumps(good))
    wrong_offset["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "not there"
    cases = [
        (tmp_path / "none.json", "does not exist"),
        (write("broken.json", '{"data": [\n{"title": "x",,}]}'), r"broken.json:2: not valid JSON"),
        (write("list.json", "[]"), "no 'data' list"),
        (write("noctx.json", '{"data": [{"paragraphs": [{"qas": []}]}]}'), r"data\[0\].paragraphs\[0\]: no 'context'"),
        (write("empty.json", '{"data": []}'), "holds no question"),
        (write("unanswered.json", json.dumps(missing_answer)), "question 'q0': no answer"),
        (write("offset.json", json.dumps(wrong_offset)), "question 'q0': answer 'not there' is not in its context"),
        (write("answers.json", json.dumps(_with_answers(good, 5))), "question 'q0': 'answers' is 5, not a list"),
        (write("answer.json", json.dumps(_with_answers(good, ["x"]))), "question 'q0': an answer without 'text'"),
    ]
    (tmp_path / "latin1.json").write_bytes('{"data": "\xe9"}'.encode("latin-1"))
    cases.append((tmp_path / "latin1.json", "not UTF-8"))
    for path, message in cases:
        with pytest.raises(ka.DatasetError, match=message):
            qa_data.read_squad(path)
    assert len(qa_data.read_squad(tmp_path / "unanswered.json", labelled=False)) == 2


def test_a_window_packs_question_and_context_with_segments(preprocessor):
    answer = {"text": "great award", "answer_start": CONTEXT.index("great")}
    out = _run(_windows(preprocessor, stride=2), "the news", CONTEXT, answer)
    tokens = preprocessor.tokenizer.get_vocabulary()
    first = [tokens[i] for i, keep in zip(out["token_ids"][0], out["padding_mask"][0]) if keep]
    assert first == ["[CLS]", "the", "news", "[SEP]", "the", "team", "won", "the", "cup", "[UNK]", "great",
                     "award", "[UNK]", "the", "film", "[SEP]"]  # not in the tiny vocabulary: "." and "for"
    assert out["segment_ids"][0].tolist() == [0] * 4 + [1] * 12
    # Off the context (question, special tokens): no offsets.
    assert (out["starts"][0][:4] == -1).all() and out["starts"][0][-1] == -1
    assert CONTEXT[out["starts"][0][10] : out["ends"][0][11]] == "great award"
    assert out["labels"][0].tolist() == [10, 11]


def test_long_contexts_become_windows_sharing_the_stride(preprocessor):
    star = {"text": "star", "answer_start": CONTEXT.index("star")}
    out = _run(_windows(preprocessor, stride=3), "the news", CONTEXT, star)
    room = 16 - 3 - 2
    context_tokens = [row[row >= 0] for row in out["starts"]]
    assert len(context_tokens) == 2  # 13 words: 11 in the first window; the 2 left and 3 shared in the second
    assert [len(c) for c in context_tokens] == [room, 13 - room + 3]
    np.testing.assert_array_equal(context_tokens[0][-3:], context_tokens[1][:3])
    # "star" is only in the second window; the first is labelled [CLS].
    assert out["labels"][0].tolist() == [0, 0]
    start, end = out["labels"][1]
    assert CONTEXT[out["starts"][1][start] : out["ends"][1][end]] == "star"
    assert out["padding_mask"][1].sum() == 4 + 5 + 1


def test_every_answer_lies_whole_in_some_window(preprocessor, tmp_path):
    windows = _windows(preprocessor, stride=2, max_question_length=3)
    examples = qa_data.read_squad(write_squad(tmp_path / "s.json", 20, seed=4))
    spans = {}
    for _, labels, offsets in qa_data.window_dataset(examples, windows, with_offsets=True).batch(64):
        for (s, e), starts, ends, row in zip(labels.numpy(), offsets["starts"].numpy(), offsets["ends"].numpy(),
                                            offsets["example"].numpy()):
            if s > 0:
                spans.setdefault(row, set()).add((starts[s], ends[e]))
    for row, example in enumerate(examples):
        answer = example["answers"][0]
        begin = len(example["context"][: answer["answer_start"]].encode())
        assert spans[row] == {(begin, begin + len(answer["text"].encode()))}, example


def test_windows_refuse_a_stride_that_leaves_no_progress(preprocessor):
    with pytest.raises(ValueError, match="stride must be at least 0 and below 9.*lower the stride"):
        qa_data.QuestionWindows(preprocessor.tokenizer, 16, stride=9, max_question_length=4)
    defaults = qa_data.QuestionWindows(preprocessor.tokenizer, 384)
    assert (defaults.stride, defaults.max_question) == (128, 64)  # Hugging Face's doc_stride and query length


def test_empty_contexts_and_questions_still_give_a_window(preprocessor):
    out = _run(_windows(preprocessor), "", "")
    assert out["token_ids"].shape == (1, 16) and (out["starts"] == -1).all()
    assert out["labels"].tolist() == [[0, 0]]


def test_datasets_split_by_article_and_tokenize_in_the_graph(tmp_path, preprocessor):
    path = write_squad(tmp_path / "s.json", count=40, articles=8)
    train, held = ka.question_dataset_from_file(
        path, preprocessor, batch_size=4, validation_split=0.25, subset="both", seed=1, stride=2,
        max_question_length=4,
    )
    titles = [{e["title"] for e in d.examples} for d in (train, held)]
    assert not titles[0] & titles[1] and len(titles[1]) == 2
    assert train.num_examples + held.num_examples == 40
    windows = sum(int(x["token_ids"].shape[0]) for x, _ in held)
    assert windows == held.num_windows > held.num_examples  # these contexts need two windows
    assert int(held.cardinality()) == -(-windows // 4)
    assert held.class_names == ["start", "end"]
    ops = dataset_ops(held)
    assert not ops & {"PyFunc", "EagerPyFunc", "PyFuncStateless"}  # windows and labels are graph ops
    assert {"ParallelMapDatasetV2", "RegexSplitWithOffsets"} <= ops


def _best_span_reference(probabilities, starts, ends, example, contexts, max_answer_length):
    """Brute force in float64: every (window, i, j) over context tokens."""
    best = {}
    for w in range(len(probabilities)):
        for i in np.flatnonzero(starts[w] >= 0):
            for j in np.flatnonzero(ends[w] >= 0):
                if i <= j < i + max_answer_length:
                    score = float(probabilities[w, 0, i]) * float(probabilities[w, 1, j])
                    if score > best.get(example[w], (-1,))[0]:
                        best[example[w]] = (score, starts[w][i], ends[w][j])
    out = []
    for q, context in enumerate(contexts):
        score, start, end = best.get(q, (0.0, 0, 0))
        raw = context.encode()
        out.append((raw[start:end].decode(), len(raw[:start].decode()), len(raw[:end].decode()), score))
    return out


def test_answers_are_the_best_span_over_all_windows():
    rng = np.random.default_rng(0)
    contexts = ["Zoë met the ministér in Paris on Friday .", "", "short one"]
    words = [[(m.start(), m.end()) for m in re.finditer(r"\S+", c)] for c in contexts]
    starts, ends, example = [], [], []
    for q, spans in enumerate(words):
        for window in range(2 if len(spans) > 3 else 1):
            s = np.full(12, -1)
            e = np.full(12, -1)
            for position, (a, b) in enumerate(spans[window * 3 :][:8]):
                raw = contexts[q].encode()
                s[position + 3] = len(contexts[q][:a].encode())
                e[position + 3] = len(contexts[q][:b].encode())
                assert raw[s[position + 3] : e[position + 3]].decode() == contexts[q][a:b]
            starts.append(s)
            ends.append(e)
            example.append(q)
    probabilities = rng.dirichlet(np.ones(12), size=(len(starts), 2)).astype(np.float32)
    starts, ends, example = np.array(starts, np.int32), np.array(ends, np.int32), np.array(example, np.int32)
    for length in (1, 3, 30):
        found = qa_data.GraphAnswers(length)(tf.constant(contexts), probabilities, starts, ends, example)
        expected = _best_span_reference(probabilities, starts, ends, example, contexts, length)
        got = list(zip(*(found[k].numpy() for k in ("answer", "start", "end", "score"))))
        for (answer, start, end, score), (e_answer, e_start, e_end, e_score) in zip(got, expected):
            assert (answer.decode(), int(start), int(end)) == (e_answer, e_start, e_end)
            assert score == pytest.approx(e_score, rel=1e-5)
    assert expected[1] == ("", 0, 0, 0.0)  # no context token: an empty answer
    with pytest.raises(ValueError, match="max_answer_length must be an integer >= 1"):
        qa_data.GraphAnswers(0)


def test_one_window_per_question_is_the_first_holding_its_answer(preprocessor, tmp_path):
    """Private training reads a question as one row: checked against the
    first answer-holding window among all its windows, picked here in Python."""
    path = write_squad(tmp_path / "s.json", 20, seed=4)
    options = dict(batch_size=64, stride=2, max_question_length=3, shuffle=False)
    every = qa_data.window_dataset(qa_data.read_squad(path), _windows(preprocessor, 2, 3), with_offsets=True)
    first = {}
    for x, labels, offsets in every.batch(256):
        for i, row in enumerate(offsets["example"].numpy()):
            if labels[i, 0] > 0 and row not in first:
                first[row] = (x["token_ids"][i].numpy(), labels[i].numpy())
    one = ka.question_dataset_from_file(path, preprocessor, answer_window_only=True, **options)
    x, labels = next(iter(one))
    assert one.privacy_unit == "question" and one.num_windows == one.num_examples == 20 == len(first)
    assert sum(1 for _ in every) > 20  # some contexts need two windows
    for row in range(20):
        np.testing.assert_array_equal(x["token_ids"][row].numpy(), first[row][0])
        np.testing.assert_array_equal(labels[row].numpy(), first[row][1])
    assert not hasattr(ka.question_dataset_from_file(path, preprocessor, **options), "privacy_unit")
