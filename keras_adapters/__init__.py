"""keras-adapters: parameter-efficient fine-tuning for Keras/TensorFlow BERT.

The public API is listed here; everything else is internal.
"""

from keras_adapters import startup

with startup.quiet_import():
    import tensorflow  # noqa: F401  (first, so its start-up lines are filtered)
    import tensorflow_text  # noqa: F401
    import keras_hub  # noqa: F401

from keras_adapters.adapter_io import AdapterFormatError
from keras_adapters.composition import Average
from keras_adapters.composition import Fuse
from keras_adapters.composition import Parallel
from keras_adapters.composition import Route
from keras_adapters.composition import Stack
from keras_adapters.data import DatasetError
from keras_adapters.data import split_directory
from keras_adapters.data import text_dataset_from_directory
from keras_adapters.data import tfds_text_dataset
from keras_adapters.export import export_multi_adapter_saved_model
from keras_adapters.export import export_saved_model
from keras_adapters.export import export_tflite
from keras_adapters.fusion import FusionConfig
from keras_adapters.heads import ClassificationHead
from keras_adapters.heads import TokenClassificationHead
from keras_adapters.heads import QuestionAnsweringHead
from keras_adapters.injection import inject_adapters
from keras_adapters.merging import merge_lora_adapters
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
from keras_adapters.pair_data import pair_dataset_from_file
from keras_adapters.parameters import parameter_report
from keras_adapters.prefix_cache import cache_frozen_prefix
from keras_adapters.presets import PresetNotFoundError
from keras_adapters.presets import default_preset
from keras_adapters.qa_data import question_dataset_from_file
from keras_adapters.question_answerer import AdapterQuestionAnswerer
from keras_adapters.runs import load_run
from keras_adapters.text_classifier import AdapterTextClassifier
from keras_adapters.token_classifier import AdapterTokenClassifier
from keras_adapters.token_data import token_dataset_from_file
from keras_adapters.training import train_classifier
from keras_adapters.version import __version__

__all__ = [
    "AdapterConfig",
    "AdapterFormatError",
    "AdapterQuestionAnswerer",
    "AdapterTextClassifier",
    "AdapterTokenClassifier",
    "Average",
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
    "pair_dataset_from_file",
    "parameter_report",
    "question_dataset_from_file",
    "split_directory",
    "text_dataset_from_directory",
    "tfds_text_dataset",
    "token_dataset_from_file",
    "train_classifier",
]
