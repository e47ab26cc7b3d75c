"""keras-adapters: parameter-efficient fine-tuning for Keras/TensorFlow BERT.

The public API is listed here; everything else is internal.
"""

from keras_adapters import startup

with startup.quiet_import():
    import tensorflow  # noqa: F401  (first, so its start-up lines are filtered)
    import tensorflow_text  # noqa: F401
    import keras_hub  # noqa: F401

from keras_adapters.backbones.bert import BertBackbone
from keras_adapters.io.adapter_folder import AdapterFormatError
from keras_adapters.core.composition import Average
from keras_adapters.core.composition import Fuse
from keras_adapters.core.composition import Parallel
from keras_adapters.core.composition import Route
from keras_adapters.core.composition import Stack
from keras_adapters.io.text_data import DatasetError
from keras_adapters.io.text_data import split_directory
from keras_adapters.io.text_data import text_dataset_from_directory
from keras_adapters.io.text_data import tfds_text_dataset
from keras_adapters.serving.export import export_multi_adapter_saved_model
from keras_adapters.serving.export import export_saved_model
from keras_adapters.serving.export import export_tflite
from keras_adapters.core.fusion import FusionConfig
from keras_adapters.tasks.heads import ClassificationHead
from keras_adapters.tasks.heads import TokenClassificationHead
from keras_adapters.tasks.heads import QuestionAnsweringHead
from keras_adapters.core.injection import inject_adapters
from keras_adapters.core.merging import merge_lora_adapters
from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.baselines import FullFineTuningConfig
from keras_adapters.methods.bitfit import BiasShift
from keras_adapters.methods.bitfit import BitFitConfig
from keras_adapters.methods.baselines import HeadOnlyConfig
from keras_adapters.methods.bottleneck import BottleneckAdapter
from keras_adapters.methods.bottleneck import HoulsbyConfig
from keras_adapters.methods.bottleneck import PfeifferConfig
from keras_adapters.methods.compacter import CompacterAdapter
from keras_adapters.methods.compacter import CompacterConfig
from keras_adapters.methods.compacter import CompacterPlusPlusConfig
from keras_adapters.methods.ia3 import IA3Config
from keras_adapters.methods.ia3 import IA3Scaling
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.lora import LoRALayer
from keras_adapters.methods.mam import MAMConfig
from keras_adapters.methods.parallel import ParallelAdapterConfig
from keras_adapters.methods.prefix import PrefixConfig
from keras_adapters.methods.prompt import PromptConfig
from keras_adapters.methods.prompt import PromptEmbedding
from keras_adapters.methods.registry import available_methods
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.tasks.pair_classification import pair_dataset_from_file
from keras_adapters.core.parameters import parameter_report
from keras_adapters.core.privacy import DPConfig
from keras_adapters.core.privacy import PrivacyBudgetError
from keras_adapters.core.prefix_cache import cache_frozen_prefix
from keras_adapters.io.presets import PresetNotFoundError
from keras_adapters.io.presets import default_preset
from keras_adapters.tasks.question_answering.data import question_dataset_from_file
from keras_adapters.models.question_answerer import AdapterQuestionAnswerer
from keras_adapters.runs.folder import load_run
from keras_adapters.models.adapter_model import AdapterModel
from keras_adapters.models.causal_lm import AdapterCausalLM
from keras_adapters.models.text_classifier import AdapterTextClassifier
from keras_adapters.models.token_classifier import AdapterTokenClassifier
from keras_adapters.tasks.token_classification.data import token_dataset_from_file
from keras_adapters.runs.training import train_classifier
from keras_adapters import tasks
from keras_adapters.tasks import Task
from keras_adapters.tasks import register_task
from keras_adapters.tasks.multi_label_classification import MultiLabelHead
from keras_adapters.tasks.multi_label_classification import multi_label_dataset
from keras_adapters.version import __version__

# Module paths of 0.8 and before (one flat folder), still importable:
# `import keras_adapters.text_classifier` is `keras_adapters.models.text_classifier`.
_MOVED = {
    "adapter_io": "io.adapter_folder",
    "answer_metrics": "tasks.question_answering.metrics",
    "composition": "core.composition",
    "data": "io.text_data",
    "distribute": "runs.distribute",
    "entity_metrics": "tasks.token_classification.metrics",
    "evaluation": "runs.evaluation",
    "export": "serving.export",
    "fusion": "core.fusion",
    "heads": "tasks.heads",
    "injection": "core.injection",
    "merging": "core.merging",
    "pair_data": "tasks.pair_classification",
    "parameters": "core.parameters",
    "precision": "core.precision",
    "prefix_cache": "core.prefix_cache",
    "presets": "io.presets",
    "qa_data": "tasks.question_answering.data",
    "question_answerer": "models.question_answerer",
    "recipe": "core.recipe",
    "serving_graph": "serving.graph",
    "text_classifier": "models.text_classifier",
    "token_classifier": "models.token_classifier",
    "token_data": "tasks.token_classification.data",
    "training": "runs.training",
}


def _alias_moved_modules():
    import importlib
    import sys

    for old, new in _MOVED.items():
        module = importlib.import_module(f"{__name__}.{new}")
        sys.modules[f"{__name__}.{old}"] = module


_alias_moved_modules()

__all__ = [
    "AdapterConfig",
    "AdapterFormatError",
    "AdapterModel",
    "AdapterCausalLM",
    "AdapterQuestionAnswerer",
    "AdapterTextClassifier",
    "AdapterTokenClassifier",
    "Average",
    "BertBackbone",
    "BiasShift",
    "BitFitConfig",
    "BottleneckAdapter",
    "ClassificationHead",
    "CompacterAdapter",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "DatasetError",
    "FullFineTuningConfig",
    "Fuse",
    "FusionConfig",
    "HeadOnlyConfig",
    "HoulsbyConfig",
    "IA3Config",
    "IA3Scaling",
    "LoRAConfig",
    "LoRALayer",
    "MAMConfig",
    "MultiLabelHead",
    "Parallel",
    "ParallelAdapterConfig",
    "PfeifferConfig",
    "PrefixConfig",
    "PresetNotFoundError",
    "PromptConfig",
    "PromptEmbedding",
    "QuestionAnsweringHead",
    "Route",
    "Stack",
    "Task",
    "TokenClassificationHead",
    "__version__",
    "available_methods",
    "cache_frozen_prefix",
    "default_preset",
    "export_multi_adapter_saved_model",
    "export_saved_model",
    "export_tflite",
    "get_adapter_config",
    "inject_adapters",
    "load_run",
    "merge_lora_adapters",
    "multi_label_dataset",
    "pair_dataset_from_file",
    "parameter_report",
    "DPConfig",
    "PrivacyBudgetError",
    "question_dataset_from_file",
    "split_directory",
    "text_dataset_from_directory",
    "tfds_text_dataset",
    "token_dataset_from_file",
    "register_task",
    "tasks",
    "train_classifier",
]
