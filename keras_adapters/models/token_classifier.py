"""AdapterTokenClassifier: a tag per word (named entities, ...) with named adapters."""

import keras

from keras_adapters import tasks
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
    the loss and by the `accuracy` metric. Pass the dataset's `class_prior`
    (the tags' shares): with `O` on most words, a head started from zero
    leaves adapters predicting `O` everywhere (`AdapterModel.add_adapter`).

    Args:
        num_classes: the number of tags; `class_names`: the tags (`O`,
            `B-PER`, ...), BIO or IOBES.
        Other arguments: as `AdapterTextClassifier`.

    Example:
    ```python
    train = ka.token_dataset_from_file("ner/train.conll", preprocessor)
    model = ka.AdapterTokenClassifier.from_preset(
        ka.default_preset(), num_classes=len(train.tag_names), class_names=train.tag_names,
        class_prior=train.class_prior, method="houlsby", sequence_length=64)
    model.fit(train, epochs=5)
    model.predict_entities(["Tim Cook visited Berlin"])
    # [[{"type": "person", "text": "Tim Cook", "start": 0, "end": 8, "score": 0.93}, ...]]
    ```
    """

    default_task = tasks.TOKEN_CLASSIFICATION

    def __init__(self, backbone, num_classes=None, task=tasks.TOKEN_CLASSIFICATION, **kwargs):
        super().__init__(backbone, num_classes=num_classes, task=task, **kwargs)


__all__ = ["AdapterTokenClassifier"]
