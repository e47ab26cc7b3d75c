"""SQuAD v1.1 files -> windowed `tf.data` for extractive question answering.

Each example is packed as `[CLS] question [SEP] context [SEP]` (segment ids
0, then 1). A context longer than the sequence leaves room for is cut into
overlapping windows (`stride` tokens shared by neighbours, as Hugging Face's
`doc_stride`), so every answer lies whole in at least one window. A window
whose context holds the whole answer is labelled with the answer's first and
last token; one that does not is labelled `(0, 0)`, the `[CLS]` token.

Everything after reading the file runs in the `tf.data` graph: the context
is cut into words as BERT pre-tokenizes (`token_data.split_words`: at white
space and punctuation, with byte offsets), each word into word pieces, and
each piece carries its word's offsets. So, as in the original BERT SQuAD
code, labels run from the first piece of the answer's first word to the last
piece of its last word, and a predicted span maps back to whole words of the
original context (`GraphAnswers`): answers are substrings of it, never a
word cut in the middle ("E" of "Eiffel").
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_adapters.io import text_data as data_lib
from keras_adapters.tasks.token_classification import data as token_data

#: The longest answer (in tokens) a prediction may have, as Hugging Face's pipeline.
MAX_ANSWER_LENGTH = 30
#: Tokens neighbouring windows share (Hugging Face's `doc_stride`).
STRIDE = 128
#: Question tokens kept; the rest of the sequence is the context's.
MAX_QUESTION_LENGTH = 64


def _fail(path, where, problem):
    raise data_lib.DatasetError(f"{path}: {where}: {problem} (SQuAD v1.1 format: {{\"data\": [{{\"title\", "
                                "\"paragraphs\": [{\"context\", \"qas\": [{\"id\", \"question\", \"answers\": "
                                "[{\"text\", \"answer_start\"}]}]}]}]}).")


def read_squad(path, labelled=True):
    """Read a SQuAD v1.1 JSON file.

    Args:
        path: the file.
        labelled: whether every question must have an answer (training and
            evaluation); `False` reads questions without answers too.

    Returns:
        A list of examples `{"id", "title", "question", "context",
        "answers": [{"text", "answer_start"}]}` in file order; answer
        offsets are characters of the context, answers stripped of white
        space (an offset up to 3 characters off is corrected to where the
        answer is).

    Raises:
        DatasetError: missing file, invalid JSON (with its line), a missing
            field or an answer that is not at its offset in the context (with
            the question's id), or no question at all.
    """
    path = Path(path)
    if not path.is_file():
        raise data_lib.DatasetError(f"SQuAD file {str(path)!r} does not exist.")
    try:
        with open(path, encoding="utf-8-sig") as f:
            document = json.load(f)
    except json.JSONDecodeError as e:
        raise data_lib.DatasetError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    except UnicodeDecodeError as e:
        raise data_lib.DatasetError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}).") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        _fail(path, "top level", "no 'data' list")
    examples = []
    for a, article in enumerate(document["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            _fail(path, f"data[{a}]", "no 'paragraphs' list")
        title = str(article.get("title", f"article {a}"))
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("context"), str):
                _fail(path, where, "no 'context' string")
            if not isinstance(paragraph.get("qas"), list):
                _fail(path, where, "no 'qas' list")
            context = paragraph["context"]
            for q, qa in enumerate(paragraph["qas"]):
                examples.append(_example(path, f"{where}.qas[{q}]", qa, title, context, labelled))
    if not examples:
        raise data_lib.DatasetError(f"{path} holds no question.")
    return examples


def _example(path, where, qa, title, context, labelled):
    if not isinstance(qa, dict) or not isinstance(qa.get("question"), str):
        _fail(path, where, "no 'question' string")
    key = str(qa.get("id", where))
    answers = qa.get("answers")
    if answers is None:
        answers = []
    if not isinstance(answers, list):
        _fail(path, f"question {key!r}", f"'answers' is {json.dumps(answers)[:40]}, not a list of answers")
    if labelled and not answers:
        _fail(path, f"question {key!r}", "no answer (pass labelled=False to read unanswered questions)")
    checked = []
    for answer in answers:
        text, start = (answer.get("text"), answer.get("answer_start")) if isinstance(answer, dict) else (None, None)
        if not isinstance(text, str) or isinstance(start, bool) or not isinstance(start, int):
            _fail(path, f"question {key!r}", "an answer without 'text' and an integer 'answer_start'")
        found = _locate(context, text, start)
        if found is None:
            _fail(path, f"question {key!r}", f"answer {text[:40]!r} is not in its context near character {start}")
        checked.append({"text": text.strip(), "answer_start": found})
    return {"id": key, "title": title, "question": qa["question"], "context": context, "answers": checked}


def _locate(context, text, start, slack=3):
    """Where the stripped answer starts in the context: at `start`, or the
    nearest occurrence within `slack` characters (SQuAD's own dev set has
    answers with a leading space and an offset one off)."""
    text = text.strip()
    if not text:
        return None
    candidates = [s for s in range(max(0, start - slack), start + slack + 1) if context.startswith(text, s)]
    return min(candidates, key=lambda s: abs(s - start)) if candidates else None


def byte_span(context, answer):
    """An answer's (start, end) in bytes of the UTF-8 context."""
    start = len(context[: answer["answer_start"]].encode("utf-8"))
    return start, start + len(answer["text"].encode("utf-8"))


class QuestionWindows:
    """In-graph: one question and its context -> windows of packed token inputs.

    Args:
        tokenizer: the model's keras-hub word-piece tokenizer.
        sequence_length: tokens per window, special tokens included.
        stride: tokens neighbouring windows share (`None`: 128, or half
            the context's room in a shorter sequence).
        max_question_length: question tokens kept (`None`: 64, or half the
            sequence in a shorter one).

    Calling it with `(question, context, answer_start, answer_end)` (strings
    and byte offsets; -1 for none) returns `(inputs, labels, offsets)` for
    `k` windows: the model's token inputs `[k, length]`, the labels
    `[k, 2]` (the answer's first and last token, or `(0, 0)`) and each
    token's byte `starts` / `ends` in the context (-1 off the context)
    `[k, length]`.
    """

    def __init__(self, tokenizer, sequence_length, stride=None, max_question_length=None):
        self.length = int(sequence_length)
        self.max_question = int(max_question_length or min(MAX_QUESTION_LENGTH, (self.length - 3) // 2))
        room = self.length - 3 - self.max_question
        stride = min(STRIDE, room // 2) if stride is None else stride
        if room < 1 or not 0 <= int(stride) < room:
            raise ValueError(
                f"stride must be at least 0 and below {max(room, 1)} (the sequence length {self.length} less "
                f"3 special tokens and {self.max_question} question tokens), got {stride}; lower the stride "
                "or raise the sequence length."
            )
        self.stride = int(stride)
        self.tokenizer = tokenizer
        self.labeller = token_data.WordPieceLabeller(tokenizer, sequence_length)
        self.ids = self.labeller.ids

    def context_pieces(self, context):
        """(piece ids, byte starts, byte ends) of one context, flat; each
        piece carries its word's span."""
        words, starts, ends = token_data.split_words(context[None])
        pieces = self.labeller.pieces(words.values)
        counts = pieces.row_lengths()
        return (
            pieces.flat_values,
            tf.repeat(tf.cast(starts.values, tf.int32), counts),
            tf.repeat(tf.cast(ends.values, tf.int32), counts),
        )

    def __call__(self, question, context, answer_start=-1, answer_end=-1):
        question_ids = tf.cast(self.tokenizer(question[None]), tf.int32)
        question_ids = question_ids.flat_values[: self.max_question] if isinstance(
            question_ids, tf.RaggedTensor) else tf.reshape(question_ids, [-1])[: self.max_question]
        ids, starts, ends = self.context_pieces(context)
        q, n = tf.shape(question_ids)[0], tf.shape(ids)[0]
        room = self.length - 3 - q
        step = room - self.stride
        count = 1 + (tf.maximum(n - room, 0) + step - 1) // step
        position = tf.range(self.length)[None]  # [1, length]
        first = q + 2  # where each window's context begins
        index = (tf.range(count) * step)[:, None] + position - first  # context piece at each position
        in_context = (position >= first) & (position < first + room) & (index < n)
        taken = tf.reduce_sum(tf.cast(in_context, tf.int32), axis=1, keepdims=True)
        safe = tf.clip_by_value(index, 0, tf.maximum(n - 1, 0))

        def context_values(values, fill):
            padded = tf.concat([values, [fill]], 0)  # a context without pieces still gathers
            return tf.where(in_context, tf.gather(padded, tf.where(n > 0, safe, 0)), fill)

        question_at = tf.gather(tf.concat([question_ids, [0]], 0), tf.clip_by_value(position - 1, 0, q))
        last = first + taken  # the closing [SEP]
        token_ids = tf.where(in_context, context_values(ids, 0), self.ids["pad"])
        token_ids = tf.where((position >= 1) & (position <= q), question_at, token_ids)
        token_ids = tf.where((position == 0), self.ids["start"], token_ids)
        token_ids = tf.where((position == q + 1) | (position == last), self.ids["end"], token_ids)
        inputs = {
            "token_ids": token_ids,
            "segment_ids": tf.cast((position >= first) & (position <= last), tf.int32),
            "padding_mask": position <= last,
        }
        offsets = {"starts": context_values(starts, -1), "ends": context_values(ends, -1)}
        labels = self.labels(in_context, offsets, answer_start, answer_end)
        return inputs, labels, offsets

    def labels(self, in_context, offsets, answer_start, answer_end):
        """`[k, 2]`: the first token ending after the answer starts and the
        last starting before it ends, where the window holds it whole."""
        starts, ends = offsets["starts"], offsets["ends"]
        begins = in_context & (ends > answer_start)
        finishes = in_context & (starts < answer_end)
        start = tf.argmax(tf.cast(begins, tf.int32), axis=1, output_type=tf.int32)
        end = self.length - 1 - tf.argmax(tf.cast(finishes[:, ::-1], tf.int32), axis=1, output_type=tf.int32)
        whole = (
            tf.reduce_any(in_context & (starts <= answer_start), axis=1)
            & tf.reduce_any(in_context & (ends >= answer_end), axis=1)
            & tf.reduce_any(begins, axis=1) & (start <= end) & (answer_start >= 0)
        )
        return tf.where(whole[:, None], tf.stack([start, end], 1), 0)


def _answer_spans(examples):
    spans = [byte_span(e["context"], e["answers"][0]) if e["answers"] else (-1, -1) for e in examples]
    return np.array(spans, np.int32).reshape([-1, 2])


def window_dataset(examples, windows, with_offsets=False, answer_window_only=False):
    """Unbatched windows of `examples` (in order): `(inputs, labels)`, or
    with `with_offsets` `(inputs, labels, {"starts", "ends", "example"})`.
    With `answer_window_only`, one window per question: the first that holds
    its answer whole (the first window when none does)."""
    spans = _answer_spans(examples)
    ds = tf.data.Dataset.from_tensor_slices((
        [e["question"] for e in examples], [e["context"] for e in examples],
        spans[:, 0], spans[:, 1], np.arange(len(examples), dtype=np.int32),
    ))

    def one(question, context, start, end, row):
        inputs, labels, offsets = windows(data_lib.clean_text(question), context, start, end)
        if answer_window_only:
            chosen = tf.argmax(tf.cast(labels[:, 0] > 0, tf.int32), output_type=tf.int32)  # 0 when none holds it
            inputs, labels, offsets = tf.nest.map_structure(lambda t: t[chosen][None], (inputs, labels, offsets))
        if not with_offsets:
            return inputs, labels
        return inputs, labels, {**offsets, "example": tf.fill(tf.shape(labels)[:1], row)}

    return ds.map(one, num_parallel_calls=data_lib.AUTOTUNE).unbatch()


def question_dataset_from_file(
    path,
    preprocessor,
    batch_size=32,
    validation_split=None,
    subset=None,
    seed=None,
    stride=None,
    max_question_length=None,
    shuffle=True,
    cache=True,
    answer_window_only=False,
):
    """A `tf.data.Dataset` of `(token inputs, [start, end] labels)` window batches from a SQuAD file.

    Args:
        path: a SQuAD v1.1 JSON file (every question answered).
        preprocessor: the model's keras-hub preprocessor (its tokenizer and
            `sequence_length` are used).
        validation_split, subset, seed: a seeded random `validation_split`
            of the articles (titles) is held out, so no article is on both
            sides (`subset`: `"training"`, `"validation"` or `"both"`).
        stride, max_question_length: see `QuestionWindows`.
        answer_window_only: one window per question, the first holding its
            answer, instead of every window of its context: each training
            row is then a question, which differentially private training
            needs for a guarantee per question (`privacy_unit`) rather than
            per window. A context longer than a window loses its other
            windows (most SQuAD contexts fit one window of 384 tokens).

    Returns:
        A dataset (two for `subset="both"`) of windows, with `examples` (the
        questions it holds, in order), `num_examples` (questions),
        `num_windows`, `stride`, `max_question_length` and, with
        `answer_window_only`, `privacy_unit = "question"`.
    """
    examples = read_squad(path)
    titles = list(dict.fromkeys(e["title"] for e in examples))
    parts = data_lib.split_rows(len(titles), validation_split, subset, seed, "articles", path)
    windows = QuestionWindows(preprocessor.tokenizer, preprocessor.sequence_length, stride, max_question_length)
    outputs = []
    for rows, training in zip(parts, data_lib.training_flags(subset if validation_split else None, shuffle)):
        chosen = {titles[i] for i in rows}
        part = [e for e in examples if e["title"] in chosen]
        ds = window_dataset(part, windows, answer_window_only=answer_window_only)
        if cache:
            ds = ds.cache()
        # Counted once (windows per question vary), so fit knows each epoch's
        # steps; the count fills the cache, so the files are tokenized once.
        num_windows = int(ds.reduce(np.int64(0), lambda count, _: count + 1))
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_windows))
        if training:
            ds = ds.shuffle(4 * len(part) + 1, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).prefetch(data_lib.AUTOTUNE)
        ds.examples, ds.num_examples, ds.num_windows = part, len(part), num_windows
        ds.class_names = ["start", "end"]  # as every dataset here names its labels
        ds.stride, ds.max_question_length = windows.stride, windows.max_question
        if answer_window_only:
            ds.privacy_unit = "question"
        outputs.append(ds)
    return tuple(outputs) if subset == "both" else outputs[0]


class GraphAnswers:
    """In-graph: window probabilities -> each question's best answer.

    A span's score is `p_start(i) * p_end(j)` over context tokens with
    `i <= j < i + max_answer_length`; each question takes its best span
    over all its windows, read from its context through the tokens' byte
    offsets. Outputs per question: `answer` (string), `start`, `end`
    (int64 character offsets: `context[start:end] == answer`), `score`
    (float32; 0 and an empty answer when the context has no token).
    """

    def __init__(self, max_answer_length=MAX_ANSWER_LENGTH):
        if isinstance(max_answer_length, bool) or not isinstance(max_answer_length, int) or max_answer_length < 1:
            raise ValueError(f"max_answer_length must be an integer >= 1, got {max_answer_length!r}.")
        self.max_answer_length = max_answer_length

    def window_spans(self, probabilities, starts, ends, max_answer_length=None):
        """Each window's best span: (log score, byte start, byte end) `[windows]`;
        `max_answer_length` (int32 `[windows]`, routed): each window's own limit."""
        length = tf.shape(starts)[1]
        valid = starts >= 0
        log_p = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), 1e-30))
        begin = tf.where(valid, log_p[:, 0], -np.inf)
        finish = tf.where(valid, log_p[:, 1], -np.inf)
        gap = tf.range(length)[None, :] - tf.range(length)[:, None]  # end - start
        limit = self.max_answer_length if max_answer_length is None else tf.reshape(max_answer_length, [-1, 1, 1])
        band = (gap[None] >= 0) & (gap[None] < limit)
        scores = tf.where(band, begin[:, :, None] + finish[:, None, :], -np.inf)
        flat = tf.reshape(scores, [tf.shape(scores)[0], -1])
        best = tf.argmax(flat, axis=1, output_type=tf.int32)
        i, j = best // length, best % length
        return (
            tf.reduce_max(flat, axis=1),
            tf.gather(starts, i, batch_dims=1),
            tf.gather(ends, j, batch_dims=1),
        )

    def __call__(self, contexts, probabilities, starts, ends, example, max_answer_length=None):
        """contexts `[questions]`; the windows' probabilities `[windows, 2,
        length]`, byte `starts` / `ends` `[windows, length]`, `example`
        (each window's question) `[windows]`, and optionally each window's
        `max_answer_length` `[windows]`."""
        count = tf.shape(contexts)[0]
        score, byte_start, byte_end = self.window_spans(probabilities, starts, ends, max_answer_length)
        best = tf.math.unsorted_segment_max(score, example, count)
        windows = tf.shape(score)[0]
        is_best = tf.equal(score, tf.gather(best, example)) & tf.math.is_finite(score)
        chosen = tf.math.unsorted_segment_min(tf.where(is_best, tf.range(windows), windows), example, count)
        found = chosen < windows
        chosen = tf.minimum(chosen, tf.maximum(windows - 1, 0))

        def pick(values):
            return tf.where(found, tf.gather(tf.concat([values, [0]], 0), chosen), 0)

        byte_start, byte_end = pick(byte_start), pick(byte_end)

        def chars(end):  # a byte offset -> characters before it
            return tf.cast(tf.strings.length(tf.strings.substr(contexts, 0 * end, end), unit="UTF8_CHAR"), tf.int64)

        return {
            "answer": tf.strings.substr(contexts, byte_start, byte_end - byte_start),
            "start": chars(byte_start),
            "end": chars(byte_end),
            "score": tf.where(found, tf.exp(best), 0.0),
        }
