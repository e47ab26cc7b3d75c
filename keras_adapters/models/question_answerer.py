"""AdapterQuestionAnswerer: extractive question answering with named adapters."""

import keras

from keras_adapters.tasks.question_answering import data as qa_data
from keras_adapters import tasks
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.models.text_classifier import DEFAULT_NAME
from keras_adapters.models.text_classifier import AdapterTextClassifier


@keras.saving.register_keras_serializable(package="keras_adapters")
class AdapterQuestionAnswerer(AdapterTextClassifier):
    """Extractive question answering (SQuAD) with named adapters on one frozen backbone.

    Everything `AdapterTextClassifier` does with adapters (several named
    adapters, switching, composing, saving folders, merging) works the same;
    its first adapter's head (and by default every added one) is a
    `QuestionAnsweringHead`: start and end probabilities over each window's
    tokens. Training data come from `ka.question_dataset_from_file` (SQuAD
    v1.1 JSON): long contexts are cut into overlapping windows, each labelled
    with the answer's first and last token (`qa_data`).

    Args:
        stride: tokens neighbouring windows of a long context share
            (`None`: 128, or half the context's room in shorter sequences).
        max_answer_length: the longest answer, in tokens, `answer` picks.
        max_question_length: question tokens kept (`None`: 64, or half the
            sequence in shorter ones).
        dropout: before the head's dense layer (Hugging Face's
            `BertForQuestionAnswering` has none; on SQuAD 0.1 did as well
            or better here, BENCHMARKS.md).
        Other arguments: as `AdapterTextClassifier` (`num_classes` is
        always 2: the start and end distributions).

    Example:
    ```python
    model = ka.AdapterQuestionAnswerer.from_preset(ka.default_preset(), method="lora", sequence_length=256)
    train = ka.question_dataset_from_file("squad/train.json", model.preprocessor, stride=96)
    model.fit(train, epochs=2)
    model.answer("Who designed the tower?", "The tower was designed by Gustave Eiffel's company.")
    # {"answer": "Gustave Eiffel's company", "start": 26, "end": 50, "score": 0.41}
    ```
    """

    default_task = tasks.QUESTION_ANSWERING

    def __init__(
        self,
        backbone,
        num_classes=None,
        task=tasks.QUESTION_ANSWERING,
        stride=None,
        max_answer_length=qa_data.MAX_ANSWER_LENGTH,
        max_question_length=None,
        adapters=None,
        method="houlsby",
        **kwargs,
    ):
        if "adapter" in kwargs and kwargs["adapter"] != "unset":
            method = kwargs.pop("adapter")
        if adapters is None and method is not None:  # a new model: its first head is a QA head
            adapters = [{
                "name": DEFAULT_NAME,
                "method": get_adapter_config(method).get_config(),
                "head": {
                    "task": task, "num_classes": num_classes, "dropout": kwargs.pop("dropout", 0.1),
                    "pooling": kwargs.pop("pooling", None), "stride": stride,
                    "max_answer_length": max_answer_length, "max_question_length": max_question_length,
                    "class_names": kwargs.pop("class_names", None),
                },
            }]
            kwargs.setdefault("active_adapters", DEFAULT_NAME)
            kwargs.setdefault("trained", DEFAULT_NAME)
        super().__init__(backbone, adapters=adapters, method=method, **kwargs)


__all__ = ["AdapterQuestionAnswerer"]
