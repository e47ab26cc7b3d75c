"""Training runs: run folders, training, evaluation, distribution."""

from keras_adapters.runs.folder import adapter_dir
from keras_adapters.runs.folder import load_run
from keras_adapters.runs.folder import load_runs
from keras_adapters.runs.folder import run_task
