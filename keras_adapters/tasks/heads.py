"""The heads of the tasks, by their 0.8 module path (`keras_adapters.heads`).

Each head lives in its task's module; `make_head` asks the task registry.
"""

from keras_adapters.tasks.base import get_task  # noqa: F401
from keras_adapters.tasks.classification import MULTI_LABEL_REMOVED  # noqa: F401
from keras_adapters.tasks.classification import POOLINGS  # noqa: F401
from keras_adapters.tasks.classification import ClassificationHead  # noqa: F401
from keras_adapters.tasks.classification import MaskedMeanPooling  # noqa: F401
from keras_adapters.tasks.classification import check_classes  # noqa: F401
from keras_adapters.tasks.classification import routed_probabilities  # noqa: F401
from keras_adapters.tasks.question_answering import QA_SETTINGS  # noqa: F401
from keras_adapters.tasks.question_answering import QuestionAnsweringHead  # noqa: F401
from keras_adapters.tasks.token_classification import TokenClassificationHead  # noqa: F401


def make_head(record, **layer_kwargs):
    """The head a task record (`task_config()`, an adapter folder's `task`) describes."""
    return get_task(record.get("task") or "text_classification").make_head(record, **layer_kwargs)
