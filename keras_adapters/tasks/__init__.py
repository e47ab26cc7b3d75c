"""Tasks: what each head means, from files to reports and served answers."""

from keras_adapters.tasks.base import CLASSIFICATION_TASKS
from keras_adapters.tasks.base import FORMATS
from keras_adapters.tasks.base import HEAD_TASKS
from keras_adapters.tasks.base import PAIR_CLASSIFICATION
from keras_adapters.tasks.base import PAIR_SUFFIXES
from keras_adapters.tasks.base import QUESTION_ANSWERING
from keras_adapters.tasks.base import TASKS
from keras_adapters.tasks.base import TEXT_CLASSIFICATION
from keras_adapters.tasks.base import TOKEN_CLASSIFICATION
from keras_adapters.tasks.base import canonical_task
from keras_adapters.tasks.base import cli_name
from keras_adapters.tasks.base import detect_task
