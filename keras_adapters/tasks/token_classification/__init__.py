"""Token classification (tagging, NER): a tag per word, from CoNLL files.

Each word's tag sits on its first word piece; the other pieces are labelled
`IGNORE` and left out of the loss and the metrics (`data`). Reports are
entity-level (seqeval's definition, `metrics`).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_adapters.core import recipe
from keras_adapters.io import text_data as data_lib
from keras_adapters.tasks.base import SAMPLE_SIZE
from keras_adapters.tasks.base import TOKEN_CLASSIFICATION
from keras_adapters.tasks.base import Task
from keras_adapters.tasks.base import TaskServing
from keras_adapters.tasks.base import looks_like_conll
from keras_adapters.tasks.base import register_task
from keras_adapters.tasks.classification import POOLINGS
from keras_adapters.tasks.classification import ClassificationHead
from keras_adapters.tasks.classification import check_classes
from keras_adapters.tasks.classification import check_labels
from keras_adapters.tasks.classification import dropout_and_logits
from keras_adapters.tasks.classification import start_from_prior
from keras_adapters.tasks.token_classification import data as token_data
from keras_adapters.tasks.token_classification import metrics as entity_metrics
from keras_adapters.tasks.token_classification.data import IGNORE


@keras.saving.register_keras_serializable(package="keras_adapters")
class TokenClassificationHead(keras.layers.Layer):
    """Dropout and a dense layer from each token's vector to tag probabilities.

    Args:
        num_classes: number of tags (2 or more).
        dropout: dropout before the dense layer.
        class_names: optional `num_classes` distinct tag names (`O`, `B-PER`, ...).
        sequence_length: the tokens per text this task was trained with.
        task: `"token_classification"`.
        pooling: unused by this head; kept (and saved) as the pooling that
            classification adapters added to the same model start from.

    Probabilities are float32 `[batch, length, num_classes]`.

    Example:
    ```python
    head = TokenClassificationHead(5, class_names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    head.build(hidden_dim=384)
    probabilities = head(sequence_output, pooled_output, padding_mask)
    ```
    """

    text_inputs = 1

    def __init__(self, num_classes, dropout=0.1, class_names=None, sequence_length=None,
                 task=TOKEN_CLASSIFICATION, pooling=None, **kwargs):
        super().__init__(**kwargs)
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} or None, got {pooling!r}.")
        self.pooling = pooling
        if str(task).replace("-", "_") != TOKEN_CLASSIFICATION:
            raise ValueError(f"A TokenClassificationHead tags tokens, not {task!r}.")
        self.task = TOKEN_CLASSIFICATION
        self.class_names = check_classes(num_classes, class_names)
        self.num_classes = int(num_classes)
        self.sequence_length = sequence_length
        self.dropout_rate = dropout
        self.dropout, self.logits = dropout_and_logits(self, num_classes, dropout)

    def build(self, hidden_dim):
        self.logits.build((None, None, int(hidden_dim)))
        self.built = True

    def call(self, sequence_output, pooled_output, padding_mask, training=None):
        logits = self.logits(self.dropout(sequence_output, training=training))
        return ops.softmax(ops.cast(logits, "float32"), axis=-1)

    weights_by_key = ClassificationHead.weights_by_key
    label_names = ClassificationHead.label_names
    task_config = ClassificationHead.task_config
    start_from_prior = start_from_prior

    def compute_output_shape(self, sequence_shape, pooled_shape, mask_shape):
        return (*sequence_shape[:2], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(self.task_config())
        return config



def token_report(model, data, batch_size=32):
    """Entity-level precision, recall, F1 (0-1, overall and per type; the
    seqeval definition, `entity_metrics`) of a token model on a CoNLL file,
    and the accuracy of its word tags. Words past the sequence length count
    as tagged `O`."""
    dataset = token_data.token_dataset_from_file(
        data, model.preprocessor, batch_size=batch_size, shuffle=False, tag_names=model.class_names
    )
    names = model.class_names
    predicted, row = [], 0
    for x, y in dataset:
        probabilities = np.asarray(model.predict_on_batch(x))
        for p, labels in zip(probabilities, y.numpy()):
            predicted.append(token_data.word_tags(p, labels, len(dataset.sentences[row]), names))
            row += 1
    report = entity_metrics.entity_report(dataset.tags, predicted)
    pairs = [(t, p) for ts, ps in zip(dataset.tags, predicted) for t, p in zip(ts, ps)]
    report["tag_accuracy"] = float(np.mean([t == p for t, p in pairs]))
    report["num_words"] = len(pairs)
    return report


def format_token_report(result):
    lines = [
        f"sentences {result['num_examples']}   entity precision {result['precision']:.4f}   "
        f"recall {result['recall']:.4f}   F1 {result['f1']:.4f}   tag accuracy {result['tag_accuracy']:.4f}",
        "",
        f"{'type':20s}{'precision':>10s}{'recall':>10s}{'f1':>10s}{'support':>10s}",
    ]
    for kind, c in result["per_type"].items():
        lines.append(f"{kind:20s}{c['precision']:10.4f}{c['recall']:10.4f}{c['f1']:10.4f}{c['support']:10d}")
    return "\n".join(lines)



def predict_entities(model, texts, batch_size=32):
    """The entities in each text: [[{"type", "text", "start", "end", "score"}]].

    Texts are cut into words at white space and punctuation (BERT's own
    pre-tokenization), each word tagged by its first piece, and runs of
    tags read as entities with the CoNLL chunk rules (`metrics`).
    `start`/`end` are character offsets into the text. Words past the
    sequence length are tagged `O`.
    """
    texts = [str(t) for t in texts]
    if not texts:
        return []
    words, starts, ends = token_data.split_words(tf.constant(texts))
    labeller = token_data.WordPieceLabeller(model.preprocessor.tokenizer, model.sequence_length)
    rows = tf.data.Dataset.from_tensor_slices(words).map(
        lambda w: labeller(w, tf.zeros(tf.shape(w), tf.int32))
    ).batch(batch_size)
    labels = np.concatenate([y.numpy() for _, y in rows])
    probabilities = model.predict(rows.map(lambda x, y: x), verbose=0)
    names = model.output_head.label_names()
    out = []
    for i, text in enumerate(texts):
        count = int(words.row_lengths()[i])
        tags, scores = token_data.word_predictions(probabilities[i], labels[i], count, names)
        out.append(token_data.entity_spans(text, starts[i].numpy(), ends[i].numpy(), tags, scores))
    return out


class TokenServing(TaskServing):
    """A token-classification adapter's functions: text -> entities
    (`data.GraphEntities`); routed, each row with its adapter's tags and length."""

    text_signature = [tf.TensorSpec([None], tf.string, name="text")]

    def __init__(self, model, length, router=None):
        super().__init__(model, length, router)
        tags = [h.label_names() for h in self.heads]
        self.entities = token_data.GraphEntities(model.preprocessor.tokenizer, self.length, tags)

    def serve_text(self, *inputs):
        (text,), ids = self.route(inputs, tf.size(tf.reshape(inputs[0], [-1])))
        lengths = tf.gather(self.lengths, ids)
        cut = data_lib.BYTES_PER_TOKEN * lengths
        text = data_lib.clean_text(tf.strings.substr(tf.reshape(text, [-1]), tf.zeros_like(cut), cut))
        starts, ends, tokens, labels = self.entities.inputs(text, lengths)
        # Padded back to the labels' width: the cut columns are padding, which no word reads.
        return self.entities(text, self.run_cut(tokens, ids, token_axis=1), starts, ends, labels, ids)


class TokenClassification(Task):
    """A tag per word (BIO or IOBES tags), from CoNLL-style files."""

    name = TOKEN_CLASSIFICATION
    head_class = TokenClassificationHead
    monitor = "tag_f1"
    signature_verb = "tag"
    routable = True
    served_outputs = "entities"
    unit = "sentence"
    token_outputs = True
    privacy_unit = "sentence"
    data_formats = ("a CoNLL-style file of 'word<TAB>tag' lines, sentences separated by blank lines "
                    "(token-classification)")

    def loss(self):
        return keras.losses.SparseCategoricalCrossentropy(ignore_class=IGNORE)

    def metrics(self, num_classes, class_names=None):
        """Labelled-token accuracy, `TagF1` (entity F1 needs whole sentences:
        `token_report`) and the tags predicted (1: collapsed to `O`)."""
        outside = list(class_names).index("O") if class_names and "O" in class_names else 0
        return [entity_metrics.MaskedAccuracy(), entity_metrics.TagF1(outside=outside),
                recipe.PredictedClasses(num_classes, ignore_class=IGNORE)]

    def check_labels(self, y, x, num_classes, class_names=None, source="y"):
        labelled = np.asarray(y)
        check_labels(labelled[labelled != IGNORE], num_classes, class_names, source)  # unlabelled pieces: -1

    def check_inputs(self, x, adapter):
        raise ValueError(
            f"Adapter {adapter!r} tags tokens: find entities in texts with "
            "model.predict_entities(texts); fit and evaluate on ka.token_dataset_from_file(...) "
            "or on token inputs."
        )

    def detect(self, path, options):
        return not isinstance(path, str) and path.is_file() and looks_like_conll(path)

    def check_data(self, data):
        if not tf.io.gfile.exists(str(data)) or tf.io.gfile.isdir(str(data)):
            raise ValueError(f"Token classification reads a CoNLL-style file; {str(data)!r} is not a file.")

    def datasets(self, data, preprocessor, validation_split, **options):
        kept = {k: options[k] for k in ("batch_size", "seed", "shuffle", "cache") if k in options}
        kept["tag_names"] = options.get("class_names")
        if not validation_split:
            return token_data.token_dataset_from_file(data, preprocessor, **kept), None
        return token_data.token_dataset_from_file(
            data, preprocessor, validation_split=validation_split, subset="both", **kept
        )

    def count_examples(self, data, options):
        return len(token_data.read_conll(data)[0])

    def sample_inputs(self, data, options, count=SAMPLE_SIZE):
        return [[" ".join(words) for words in token_data.read_conll(data)[0][:count]]]

    def evaluate(self, model, data, batch_size=32, **options):
        return token_report(model, data, batch_size=batch_size)

    def format_report(self, report):
        return format_token_report(report)

    def predict(self, model, columns, batch_size=32):
        texts = columns[0]
        found = predict_entities(model, texts, batch_size=batch_size)
        return [{"text": t, "entities": e} for t, e in zip(texts, found)]

    def format_prediction(self, result):
        shown = ", ".join(f"{s['text']} ({s['type']}, {s['score']:.2f})" for s in result["entities"]) or "-"
        text = result["text"]
        return f"{shown}\t{text if len(text) <= 70 else text[:67] + '...'}"

    def serving(self, model, length, router=None):
        return TokenServing(model, length, router)


TASK = register_task(TokenClassification())
