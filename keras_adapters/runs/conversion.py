"""`keras-adapters convert`: adapters trained with other libraries, as our
adapter folders, and ours as peft or AdapterHub folders; GGUF checkpoints as Hugging Face
folders.

A peft or AdapterHub folder is read by the model (`AdapterModel.load_adapter`,
which knows both), on the checkpoint it was trained on, and written with
`save_adapter`, so the result carries everything our own folders do: the
backbone's fingerprint, the tokenizer, the head, a checksum. The other way,
our folder's tensors are renamed and transposed into peft's or
AdapterHub's layout (`io.peft_format`, `io.adapterhub_format`); no model is built.
"""

import json
import os
import warnings
from pathlib import Path

from keras_adapters import tasks
from keras_adapters.backbones import bert
from keras_adapters.backbones.family import family_of
from keras_adapters.io import adapter_folder as adapter_io
from keras_adapters.io import adapterhub_format
from keras_adapters.io import gguf_checkpoint
from keras_adapters.io import peft_causal_lm
from keras_adapters.io import peft_format
from keras_adapters.io import presets
from keras_adapters.models import AdapterModel
from keras_adapters.models.causal_lm import AdapterCausalLM
from keras_adapters.runs.folder import adapter_dir

#: Hub names of the checkpoint embedded as "default" (a peft folder trained on
#: it in PyTorch names it so).
DEFAULT_PRESET_NAMES = ("sentence-transformers/all-MiniLM-L6-v2",)


def base_preset(source, preset=None):
    """The checkpoint `source` was trained on: `preset`, or the folder (or
    known hub name) its config names."""
    if preset is not None:
        return preset
    if adapterhub_format.is_adapterhub_folder(source):
        base = adapterhub_format.AdapterHubFolder(source, tasks.adapterhub_head_types()).base
    else:
        base = peft_format.PeftFolder.base_of(source)
    if base in DEFAULT_PRESET_NAMES:
        return presets.DEFAULT_PRESET_ALIAS
    if base and os.path.isdir(base):
        return base
    raise presets.PresetNotFoundError(
        f"{source} was trained on {base!r}, which is not a folder here; pass --preset FOLDER "
        "(a local copy of that same checkpoint: a Hugging Face folder or a keras-hub preset folder)."
    )


def convert(source, output, preset=None, sequence_length=128):
    """Write the adapter in `source` (a peft or AdapterHub folder) as our adapter folder `output`.

    Returns:
        (output folder, the adapter's method name).
    """
    preset = base_preset(source, preset)
    if peft_format.is_causal_lm_folder(source):
        model = AdapterCausalLM.from_adapter(source, preset=preset)
        model.save_adapter(output)
        return str(output), model.adapter_config().method
    model = AdapterModel.from_preset(preset, method=None, sequence_length=sequence_length)
    name = model.load_adapter(source)
    model.save_adapter(output, name)
    return str(output), model.state.configs[name].method


def checkpoint(source, output):
    """Write the GGUF checkpoint `source` as a Hugging Face folder `output`
    (what `--preset` takes; `keras_adapters.io.gguf_checkpoint`).

    Returns:
        (output folder, a one-line description of the model).
    """
    folder = gguf_checkpoint.convert_gguf(source, output)
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    return str(folder), (f"{config['model_type']} model, {config['num_hidden_layers']} layers, "
                         f"hidden size {config['hidden_size']}, vocabulary {config['vocab_size']}")


def to_peft(source, output):
    """Write our adapter in `source` (an adapter or run folder) as a peft folder `output`.

    Returns:
        (output folder, the adapter's method name).
    """
    directory = adapter_dir(source)
    config, tensors = adapter_io.read_folder(directory)
    task = tasks.get_task(adapter_io.task_type(config, directory, tasks.available_tasks()))
    if task.decoder:
        return _causal_lm_to_peft(directory, config, tensors, output)
    architecture = _bert_architecture(directory, config, "BertForSequenceClassification")
    base = presets.resolve_preset(config["backbone"]["preset"])
    peft_format.write_peft_folder(
        output, config, tensors, architecture["num_layers"], os.path.abspath(base), task.peft_task_type
    )
    return str(output), config["method"]["method"]


def to_adapterhub(source, output):
    """Write our bottleneck, LoRA, (IA)^3, prefix or prompt adapter in `source` (an
    adapter or run folder) with its classification head as an AdapterHub folder `output`.

    Returns:
        (output folder, the adapter's method name).
    """
    directory = adapter_dir(source)
    config, tensors = adapter_io.read_folder(directory)
    task = tasks.get_task(adapter_io.task_type(config, directory, tasks.available_tasks()))
    if task.decoder:
        raise adapter_io.AdapterFormatError(
            f"{directory} is a decoder adapter; AdapterHub folders are written for BERT-family classifiers "
            "(convert it --to peft)."
        )
    architecture = _bert_architecture(directory, config, "AdapterHub's BertAdapterModel")
    base = os.path.abspath(presets.resolve_preset(config["backbone"]["preset"]))
    adapterhub_format.write_adapterhub_folder(output, config, tensors, architecture["num_layers"],
                                              architecture["hidden_dim"], base, task.adapterhub_head_type)
    return str(output), config["method"]["method"]


def _bert_architecture(directory, config, pytorch_model):
    """The BERT backbone's recorded architecture; a warning when it computed
    another activation than the exact GELU PyTorch's BERT computes."""
    architecture = config["backbone"]["architecture"]
    activation = bert.recorded_activation(architecture)
    if activation not in (None, "gelu"):
        warnings.warn(
            f"{directory} was trained on a backbone computing {activation!r}; {pytorch_model} "
            "computes the checkpoint's exact GELU, so PyTorch's outputs will differ slightly (about 1e-3).",
            stacklevel=3,
        )
    return architecture


def _causal_lm_to_peft(directory, config, tensors, output):
    """A decoder adapter as peft's CAUSAL_LM folder: the model is loaded (its
    family and cache shape say where peft keeps each tensor)."""
    model = AdapterCausalLM.from_adapter(directory)
    backbone = model.backbone
    family = family_of(backbone)
    base = os.path.abspath(model.checkpoint_folder)
    peft_causal_lm.write_causal_lm_folder(output, config["method"], tensors, family, family.cache_shape(backbone),
                                          int(backbone.hidden_dim), base)
    return str(output), config["method"]["method"]
