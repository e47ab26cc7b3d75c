"""AdapterTokenClassifier: a tag per word (named entities, ...) with named adapters."""

import keras
import numpy as np
import tensorflow as tf

from keras_adapters import tasks
from keras_adapters.tasks.token_classification import data as token_data
from keras_adapters.models.text_classifier import AdapterTextClassifier


@keras.saving.register_keras_serializable(package="keras_adapters")
class AdapterTokenClassifier(AdapterTextClassifier):
    """Token classification (NER, POS, ...) with named adapters on one frozen backbone.

    Everything `AdapterTextClassifier` does with adapters (several named
    adapters, switching, composing, saving folders, merging) works the same;
    its first adapter's head (and by default every added one) is a
    `TokenClassificationHead`: tag probabilities for every word piece.
    Training data come from `ka.token_dataset_from_file` (CoNLL files): each
    word's tag sits on its first word piece, the other pieces are ignored by
    the loss and by the `accuracy` metric.

    Args:
        num_classes: the number of tags; `class_names`: the tags (`O`,
            `B-PER`, ...), BIO or IOBES.
        Other arguments: as `AdapterTextClassifier`.

    Example:
    ```python
    train = ka.token_dataset_from_file("ner/train.conll", preprocessor)
    model = ka.AdapterTokenClassifier.from_preset(
        ka.default_preset(), num_classes=len(train.tag_names), class_names=train.tag_names,
        method="houlsby", sequence_length=64)
    model.fit(train, epochs=5)
    model.predict_entities(["Tim Cook visited Berlin"])
    # [[{"type": "person", "text": "Tim Cook", "start": 0, "end": 8, "score": 0.93}, ...]]
    ```
    """

    default_task = tasks.TOKEN_CLASSIFICATION

    def __init__(self, backbone, num_classes=None, task=tasks.TOKEN_CLASSIFICATION, **kwargs):
        super().__init__(backbone, num_classes=num_classes, task=task, **kwargs)

    def predict_entities(self, texts, batch_size=32):
        """The entities in each text: [[{"type", "text", "start", "end", "score"}]].

        Texts are cut into words at white space and punctuation (BERT's own
        pre-tokenization), each word tagged by its first piece, and runs of
        tags read as entities with the CoNLL chunk rules (`entity_metrics`).
        `start`/`end` are character offsets into the text. Words past the
        sequence length are tagged `O`.
        """
        texts = [str(t) for t in texts]
        if not texts:
            return []
        words, starts, ends = token_data.split_words(tf.constant(texts))
        labeller = token_data.WordPieceLabeller(self.preprocessor.tokenizer, self.sequence_length)
        rows = tf.data.Dataset.from_tensor_slices(words).map(
            lambda w: labeller(w, tf.zeros(tf.shape(w), tf.int32))
        ).batch(batch_size)
        labels = np.concatenate([y.numpy() for _, y in rows])
        probabilities = self.predict(rows.map(lambda x, y: x), verbose=0)
        names = self._output_head().label_names()
        out = []
        for i, text in enumerate(texts):
            count = int(words.row_lengths()[i])
            tags, scores = token_data.word_predictions(probabilities[i], labels[i], count, names)
            out.append(token_data.entity_spans(text, starts[i].numpy(), ends[i].numpy(), tags, scores))
        return out


__all__ = ["AdapterTokenClassifier"]
