"""CoNLL-style files of tagged words -> tokenized `tf.data` for token classification.

One word and its tag per line (`word<TAB>tag`, or `word tag` split on white
space with the tag last), a blank line between sentences, `-DOCSTART-` lines
skipped. Tags are BIO or IOBES: `O`, or `B-`, `I-`, `E-`, `S-` and a type.

Each sentence's words are tokenized in the `tf.data` graph; the word's tag
goes on its first word piece and the other pieces get `IGNORE` (-1), which
the loss and metrics skip, as Hugging Face's token-classification recipe
does. A word that yields no piece (a zero-width character) is read as
`[UNK]`, so every word keeps exactly one labelled position and predictions
map back to words one to one. Sentences longer than the sequence length are
cut; their words past the cut are predicted `O` (`word_tags`).
"""

from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from keras_adapters.io import text_data as data_lib
from keras_adapters.core import recipe
from keras_adapters.tasks.routing import padded_table
from keras_adapters.tasks.token_classification.metrics import TAG_PREFIXES
from keras_adapters.tasks.token_classification.metrics import entities

IGNORE = recipe.IGNORE
#: How raw text is cut into words: at white space, and each punctuation mark or
#: symbol a word of its own (BERT's pre-tokenization, what CoNLL files hold).
WORD_DELIMITERS = r"\s+|[\p{P}\p{S}]"
KEPT_DELIMITERS = r"[\p{P}\p{S}]"
SUFFIXES = (".conll", ".txt", ".tsv", ".iob", ".bio")


def _check_tag(path, number, tag):
    prefix, dash, kind = tag.partition("-")
    if tag != "O" and not (prefix in TAG_PREFIXES and dash and kind):
        raise data_lib.DatasetError(
            f"{path}:{number}: tag {tag!r} is not BIO or IOBES (O, or B-/I-/E-/S- and a type such as B-PER)."
        )


def read_conll(path, tagged=True):
    """Read a CoNLL-style file.

    Args:
        path: the file.
        tagged: `False` reads words only (one word per line, any columns
            after the first are ignored).

    Returns:
        (sentences, tags): lists of word lists and of tag lists (`None`
        untagged).

    Raises:
        DatasetError: missing file, a line without a tag, a tag that is not
            BIO/IOBES, or no sentence; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise data_lib.DatasetError(f"CoNLL file {str(path)!r} does not exist.")
    sentences, tags, words, word_tags = [], [], [], []

    def close():
        if words:
            sentences.append(list(words))
            tags.append(list(word_tags))
            words.clear()
            word_tags.clear()

    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                close()
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            if tagged and (len(fields) < 2 or not fields[0].strip() or not fields[-1].strip()):
                raise data_lib.DatasetError(
                    f"{path}:{number}: {line[:60]!r} is not 'word<TAB>tag' (or 'word tag'); sentences are "
                    "separated by blank lines."
                )
            words.append(fields[0].strip() or fields[0])
            if tagged:
                tag = fields[-1].strip()
                _check_tag(path, number, tag)
                word_tags.append(tag)
    close()
    if not sentences:
        raise data_lib.DatasetError(f"{path} holds no sentence.")
    return sentences, (tags if tagged else None)


def tag_order(tags):
    """Tag names in label order: `O` first, then by type and prefix."""
    names = {t for sentence in tags for t in sentence} | {"O"}
    return ["O"] + sorted(names - {"O"}, key=lambda t: (t.partition("-")[2], t))


class WordPieceLabeller:
    """In-graph: one sentence's words and tag ids -> packed token inputs and
    per-piece labels (`IGNORE` off the first piece of each word).

    Args:
        tokenizer: the model's keras-hub word-piece tokenizer.
        sequence_length: tokens per sentence, `[CLS]` and `[SEP]` included.
    """

    def __init__(self, tokenizer, sequence_length):
        self.tokenizer = tokenizer
        self.length = int(sequence_length)
        self.ids = {
            k: int(getattr(tokenizer, f"{k}_token_id")) for k in ("start", "end", "pad")
        }
        self.unk = int(tokenizer.token_to_id(getattr(tokenizer, "unknown_token", "[UNK]")))

    def pieces(self, words):
        """Ragged [words, pieces]; a word without pieces becomes `[UNK]`."""
        pieces = tf.cast(self.tokenizer(words), tf.int32)
        empty = tf.cast(tf.equal(pieces.row_lengths(), 0), tf.int64)
        filler = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(empty)], self.unk), empty)
        return tf.concat([pieces, filler], axis=1)

    def __call__(self, words, tag_ids, length=None):
        """`length` (a scalar tensor, at most `sequence_length`): pack to
        that many tokens, then pad to `sequence_length` (routed serving)."""
        pieces = self.pieces(words)
        first = tf.equal(tf.ragged.range(pieces.row_lengths()).flat_values, 0)
        labels = tf.where(first, tf.repeat(tf.cast(tag_ids, tf.int32), pieces.row_lengths()), IGNORE)
        keep = self.length - 2 if length is None else tf.cast(length, tf.int32) - 2
        flat = pieces.flat_values[:keep]
        labels = labels[:keep]
        pad = self.length - 2 - tf.shape(flat)[0]
        token_ids = tf.concat([[self.ids["start"]], flat, [self.ids["end"]], tf.fill([pad], self.ids["pad"])], 0)
        labels = tf.concat([[IGNORE], labels, [IGNORE], tf.fill([pad], IGNORE)], 0)
        token_ids = tf.ensure_shape(token_ids, [self.length])
        inputs = {
            "token_ids": token_ids,
            "segment_ids": tf.zeros_like(token_ids),
            "padding_mask": tf.not_equal(token_ids, self.ids["pad"]),
        }
        return inputs, tf.ensure_shape(labels, [self.length])


def token_dataset_from_file(
    path,
    preprocessor,
    batch_size=32,
    validation_split=None,
    subset=None,
    seed=None,
    tag_names=None,
    shuffle=True,
    cache=True,
):
    """A `tf.data.Dataset` of `(token inputs, per-piece labels)` batches from a CoNLL file.

    Args:
        path: a CoNLL-style file (see module docstring).
        preprocessor: the model's keras-hub preprocessor (its tokenizer and
            `sequence_length` are used).
        validation_split, subset, seed: a seeded random `validation_split`
            of the sentences is held out (`subset`: `"training"`,
            `"validation"` or `"both"`).
        tag_names: the run's tags in label order (tags are mapped by name;
            an unknown tag is an error); `None`: `tag_order` of the file's.

    Returns:
        A dataset (two for `subset="both"`) with `tag_names`,
        `num_examples` (sentences) and `sentences` / `tags` (the words and
        tags it holds, in order when not shuffled).
    """
    sentences, tags = read_conll(path)
    names = list(tag_names) if tag_names is not None else tag_order(tags)
    if names == ["O"]:
        raise data_lib.DatasetError(
            f"{path} has no entity tags: every word is tagged O. A tagger learns entity types from words "
            "tagged B-TYPE/I-TYPE (e.g. B-PER); tag the entities, or pass the file with them."
        )
    index = {t: i for i, t in enumerate(names)}
    unknown = sorted({t for s in tags for t in s} - set(index))
    if unknown:
        raise data_lib.DatasetError(
            f"{path} has tag(s) {unknown[:10]} that the model does not know; its tags are {names}."
        )
    parts = data_lib.split_rows(len(sentences), validation_split, subset, seed, "sentences", path)
    labeller = WordPieceLabeller(preprocessor.tokenizer, preprocessor.sequence_length)
    outputs = []
    for rows, training in zip(parts, data_lib.training_flags(subset if validation_split else None, shuffle)):
        words = tf.ragged.constant([sentences[i] for i in rows], dtype=tf.string)
        ids = tf.ragged.constant([[index[t] for t in tags[i]] for i in rows], dtype=tf.int32)
        ds = tf.data.Dataset.from_tensor_slices((words, ids))
        ds = ds.map(lambda w, t: labeller(data_lib.clean_text(w), t), num_parallel_calls=data_lib.AUTOTUNE)
        if cache:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(max(1, len(rows)), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).prefetch(data_lib.AUTOTUNE)
        ds.tag_names = ds.class_names = names  # class_names: as every dataset here names its labels
        ds.num_examples = len(rows)
        ds.sentences = [sentences[i] for i in rows]
        ds.tags = [tags[i] for i in rows]
        ds.class_prior = data_lib.class_prior([index[t] for i in rows for t in tags[i]], len(names))
        outputs.append(ds)
    return tuple(outputs) if subset == "both" else outputs[0]


def split_words(texts):
    """In-graph: texts `[n]` -> (words, starts, ends), ragged `[n, words]`;
    offsets in bytes of the UTF-8 text."""
    return tf_text.regex_split_with_offsets(texts, WORD_DELIMITERS, KEPT_DELIMITERS)


def entity_spans(text, starts, ends, tags, scores):
    """Entities of one text: [{"type", "text", "start", "end", "score"}].

    Args:
        text: the text (a Python string).
        starts, ends: each word's byte offsets in its UTF-8 (`split_words`).
        tags, scores: each word's predicted tag and its probability.

    `start`/`end` are character offsets (`text[start:end]` is the entity's
    text); `score` is the mean of its words' tag probabilities.
    """
    raw = text.encode("utf-8")
    spans = []
    for kind, first, last in entities(tags):
        start = len(raw[: int(starts[first])].decode("utf-8", errors="replace"))
        end = len(raw[: int(ends[last])].decode("utf-8", errors="replace"))
        spans.append({
            "type": kind, "text": text[start:end], "start": start, "end": end,
            "score": float(np.mean(scores[first : last + 1])),
        })
    return spans


def word_tags(probabilities, labels, num_words, tag_names):
    """Each word's predicted tag from per-piece probabilities.

    Args:
        probabilities: [length, tags] of one sentence.
        labels: its per-piece labels (`IGNORE` off first pieces), as the
            dataset gives them; they mark where each kept word starts.
        num_words: the sentence's words (those cut off are predicted `O`).
        tag_names: tag names in label order.
    """
    return word_predictions(probabilities, labels, num_words, tag_names)[0]


def word_predictions(probabilities, labels, num_words, tag_names):
    """(tags, scores): `word_tags` and each tag's probability (0 for words cut off)."""
    first = np.asarray(probabilities)[np.flatnonzero(np.asarray(labels) != IGNORE)]
    tags = [tag_names[i] for i in first.argmax(axis=-1)] + ["O"] * (num_words - len(first))
    scores = list(first.max(axis=-1)) + [0.0] * (num_words - len(first))
    return tags, scores


class GraphEntities:
    """In-graph: texts -> entities, what a served token model answers.

    The same steps as `AdapterTokenClassifier.predict_entities`, as
    TensorFlow ops: words split as `split_words` does, each labelled and
    packed by `WordPieceLabeller` (as in training), the model's tag for each
    word's first piece, the CoNLL chunk rules (`entity_metrics`) vectorized,
    and character offsets. Outputs are padded to the most entities in the
    batch: `entity_type`, `entity_text` (string), `start`, `end` (int64
    character offsets), `score` (float32) `[batch, E]`, and `num_entities`
    (int32 `[batch]`).

    Args:
        tokenizer, sequence_length: as `WordPieceLabeller`.
        tag_names: the head's tags, in label order.
    """

    PREFIXES = {"O": 0, "B": 1, "I": 2, "E": 3, "S": 4}

    def __init__(self, tokenizer, sequence_length, tag_names):
        self.labeller = WordPieceLabeller(tokenizer, sequence_length)
        self.length = int(sequence_length)
        tables = tag_names if tag_names and isinstance(tag_names[0], (list, tuple)) else [tag_names]
        # Routed: one row of each table per adapter; rows are padded past an
        # adapter's tags with entries read as O (also words cut off by the length).
        width = max(len(t) for t in tables) + 1
        kinds = [sorted({t.partition("-")[2] for t in tags if t != "O"}) for tags in tables]
        self.kinds = padded_table([[""] + k for k in kinds], "")
        self.prefix = padded_table(
            [[self.PREFIXES[t.partition("-")[0]] for t in tags] for tags in tables], 0, tf.int32, width
        )
        self.kind = padded_table(
            [[k.index(t.partition("-")[2]) + 1 if t != "O" else 0 for t in tags] for tags, k in zip(tables, kinds)],
            0, tf.int32, width,
        )
        self.outside = width - 1

    def inputs(self, text, lengths=None):
        """(texts cleaned, word byte starts/ends ragged, model inputs, per-piece
        labels); `lengths` (int32 `[batch]`): each row's own sequence length."""
        words, starts, ends = split_words(text)
        spec = (
            {k: tf.TensorSpec([self.length], d) for k, d in
             (("token_ids", tf.int32), ("segment_ids", tf.int32), ("padding_mask", tf.bool))},
            tf.TensorSpec([self.length], tf.int32),
        )
        if lengths is None:
            lengths = tf.fill([tf.shape(text)[0]], self.length)
        packed, labels = tf.map_fn(
            lambda w: self.labeller(w[0], tf.zeros(tf.shape(w[0]), tf.int32), w[1]), (words, lengths),
            fn_output_signature=spec,
        )
        return starts, ends, packed, labels

    def __call__(self, text, probabilities, starts, ends, labels, ids=None):
        """`ids` (int32 `[batch]`, routed): each row's index into the tag tables."""
        rows = tf.shape(text)[0]
        ids = tf.zeros([rows], tf.int32) if ids is None else ids
        width = tf.cast(tf.reduce_max(tf.concat([starts.row_lengths(), [0]], 0)), tf.int32)
        first = tf.ragged.boolean_mask(probabilities, tf.not_equal(labels, IGNORE))  # [batch, kept words, tags]
        tag = tf.ragged.map_flat_values(lambda p: tf.cast(tf.argmax(p, axis=-1), tf.int32), first)
        score = tf.ragged.map_flat_values(lambda p: tf.reduce_max(p, axis=-1), first)
        tag = tag.to_tensor(self.outside, shape=[rows, width])
        score = score.to_tensor(0.0, shape=[rows, width])
        prefix = tf.gather(tf.gather(self.prefix, ids), tag, batch_dims=1)
        kind = tf.gather(tf.gather(self.kind, ids), tag, batch_dims=1)
        prev_prefix = tf.pad(prefix[:, :-1], [[0, 0], [1, 0]])
        prev_kind = tf.pad(kind[:, :-1], [[0, 0], [1, 0]])
        inside = prefix > 0
        begins = (
            (prefix == 1) | (prefix == 4)
            | ((prev_prefix == 0) | (prev_prefix >= 3)) & ((prefix == 2) | (prefix == 3))
            | inside & tf.not_equal(prev_kind, kind)
        )
        chunk = tf.cumsum(tf.cast(begins, tf.int32), axis=1) - 1  # each word's entity index in its row
        count = tf.reduce_max(tf.concat([chunk + 1, tf.zeros([rows, 1], tf.int32)], 1), axis=1)
        most = tf.reduce_max(tf.concat([count, [0]], 0))
        position = tf.broadcast_to(tf.range(width)[None], [rows, width])
        keep = inside & (chunk >= 0)
        segment = tf.boolean_mask(tf.range(rows)[:, None] * width + chunk, keep)
        total = rows * width

        def per_entity(reduce, values):
            found = reduce(tf.boolean_mask(values, keep), segment, total)
            return tf.reshape(found, [rows, width])[:, :most]

        first_word = per_entity(tf.math.unsorted_segment_min, position)
        last_word = per_entity(tf.math.unsorted_segment_max, position)
        valid = tf.range(most)[None] < count[:, None]
        first_word = tf.where(valid, first_word, 0)
        last_word = tf.where(valid, last_word, 0)
        byte_start = tf.gather(tf.cast(starts.to_tensor(0), tf.int32), first_word, batch_dims=1)
        byte_end = tf.gather(tf.cast(ends.to_tensor(0), tf.int32), last_word, batch_dims=1)
        texts = tf.broadcast_to(text[:, None], tf.shape(byte_start))

        def chars(end):  # a byte offset -> characters before it
            return tf.strings.length(tf.strings.substr(texts, tf.zeros_like(end), end), unit="UTF8_CHAR")

        return {
            "entity_type": tf.where(
                valid, tf.gather(tf.gather(self.kinds, ids), tf.gather(kind, first_word, batch_dims=1), batch_dims=1), ""
            ),
            "entity_text": tf.where(valid, tf.strings.substr(texts, byte_start, byte_end - byte_start), ""),
            "start": tf.where(valid, tf.cast(chars(byte_start), tf.int64), 0),
            "end": tf.where(valid, tf.cast(chars(byte_end), tf.int64), 0),
            "score": tf.where(valid, per_entity(tf.math.unsorted_segment_mean, score), 0.0),
            "num_entities": count,
        }
