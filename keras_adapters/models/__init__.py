"""The Keras models that hold a backbone, named adapters and their heads.

`AdapterModel` holds adapters of any encoder task (`AdapterTextClassifier`,
`AdapterTokenClassifier` and `AdapterQuestionAnswerer` are its names of 0.8
and before, each with its own first task, saved under its own name in
`.keras` files); `AdapterCausalLM` holds a decoder's."""

from keras_adapters.models.adapter_model import AdapterModel
from keras_adapters.models.causal_lm import AdapterCausalLM
from keras_adapters.models.question_answerer import AdapterQuestionAnswerer
from keras_adapters.models.text_classifier import AdapterTextClassifier
from keras_adapters.models.token_classifier import AdapterTokenClassifier

#: The classes whose first adapter's task is not text classification (they
#: add `answer` and `predict_entities`; a decoder's adapters live in
#: `AdapterCausalLM`); any other task uses `AdapterTextClassifier`.
_FIRST_TASK_CLASSES = (AdapterTokenClassifier, AdapterQuestionAnswerer, AdapterCausalLM)


def model_class(task):
    """The model class whose first adapter does `task` (a name)."""
    return next((c for c in _FIRST_TASK_CLASSES if c.default_task == task), AdapterTextClassifier)
