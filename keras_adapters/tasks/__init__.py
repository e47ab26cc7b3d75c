"""Tasks: what each head means, from files to reports and served answers.

`Task` is the interface; each task is one module here that registers
itself (`register_task`), in the order `detect_task` tries them. A task
defined outside the package registers the same way.
"""

from keras_adapters.tasks.base import CAUSAL_LM  # noqa: F401
from keras_adapters.tasks.base import CLASSIFICATION_TASKS  # noqa: F401
from keras_adapters.tasks.base import PAIR_CLASSIFICATION  # noqa: F401
from keras_adapters.tasks.base import PAIR_SUFFIXES  # noqa: F401
from keras_adapters.tasks.base import QUESTION_ANSWERING  # noqa: F401
from keras_adapters.tasks.base import TEXT_CLASSIFICATION  # noqa: F401
from keras_adapters.tasks.base import TOKEN_CLASSIFICATION  # noqa: F401
from keras_adapters.tasks.base import Task  # noqa: F401
from keras_adapters.tasks.base import TaskServing  # noqa: F401
from keras_adapters.tasks.base import available_tasks  # noqa: F401
from keras_adapters.tasks.base import canonical_task  # noqa: F401
from keras_adapters.tasks.base import adapterhub_head_types  # noqa: F401
from keras_adapters.tasks.base import peft_task_types  # noqa: F401
from keras_adapters.tasks.base import cli_name  # noqa: F401
from keras_adapters.tasks.base import detect_task  # noqa: F401
from keras_adapters.tasks.base import formats  # noqa: F401
from keras_adapters.tasks.base import get_task  # noqa: F401
from keras_adapters.tasks.base import register_task  # noqa: F401

# Registration order is detection order: folders, then files by their suffix,
# columns (pairs: a text_b column) or lines (CoNLL: a tag last), SQuAD, lists of labels,
# prompt/completion or messages records (a decoder's).
from keras_adapters.tasks import text_classification  # noqa: E402,F401
from keras_adapters.tasks import pair_classification  # noqa: E402,F401
from keras_adapters.tasks import token_classification  # noqa: E402,F401
from keras_adapters.tasks import question_answering  # noqa: E402,F401
from keras_adapters.tasks import multi_label_classification  # noqa: E402,F401
from keras_adapters.tasks import causal_lm  # noqa: E402,F401

from keras_adapters.tasks.defaults import learning_rate  # noqa: E402,F401
from keras_adapters.tasks.defaults import shortfall  # noqa: E402,F401

#: The tasks this package defines (`available_tasks()` adds registered ones).
TASKS = tuple(available_tasks())
#: Those whose adapters carry a head layer (`AdapterModel`'s; a decoder's head is its token output).
HEAD_TASKS = tuple(t for t in TASKS if not get_task(t).decoder)
