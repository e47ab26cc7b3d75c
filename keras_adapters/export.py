"""Export for serving: SavedModel (TF Serving) and TFLite.

SavedModel signatures (tokenization inside, so clients send text):
- `serving_default`: `text` (string [None]) -> `probabilities` (float32
  [None, C]), `label_id` (int64 [None]), `label` (string [None]).
- `serve_token_ids`: `token_ids`, `segment_ids`, `padding_mask` (int32
  [None, None]) -> `probabilities`, for clients that tokenize themselves.

Texts are cleaned in the graph as in training (cut to the bytes the sequence
length can use, invalid UTF-8 replaced) and truncated by the tokenizer, so
empty, huge or malformed inputs get an answer, never an error. The model's
active adapters are exported; a lone LoRA or (IA)^3 adapter is merged into
the base weights first (no extra latency), bottleneck adapters export as
they are. A model with several named adapters exports one `classify_<name>`
signature each, sharing one stored backbone
(`export_multi_adapter_saved_model`). Versions are written to a temporary
folder and renamed when complete.

The exported graphs need only TensorFlow and tensorflow-text at serving
time: no Keras, keras-hub or keras-adapters code.
"""

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from keras_adapters import data as data_lib
from keras_adapters import runs
from keras_adapters.text_classifier import TOKEN_INPUTS


def _serving_copy(model, merge):
    """A copy of `model` for export, with LoRA/(IA)^3 merged when asked.

    Only a model whose one adapter is mergeable is merged (several adapters
    share the base weights, so they export as they are).
    """
    names = model.adapter_names
    mergeable = (
        merge
        and len(names) == 1
        and model.active_adapters == names[0]
        and model.merged_adapter is None
        and model.adapter_config().method in ("lora", "ia3")
    )
    if not mergeable:
        return model
    config = model.get_config()
    # The tokenizer's vocabulary is an asset, not config: share the layer.
    config["preprocessor"] = model.preprocessor
    copy = type(model).from_config(config)
    for target, source in zip(copy.weights, model.weights):
        target.assign(source)
    copy.merge_adapter()
    return copy


def _token_signature():
    return {name: tf.TensorSpec([None, None], tf.int32, name=name) for name in TOKEN_INPUTS}


def _as_model_inputs(token_ids, segment_ids, padding_mask):
    return {
        "token_ids": tf.cast(token_ids, tf.int32),
        "segment_ids": tf.cast(segment_ids, tf.int32),
        "padding_mask": tf.cast(padding_mask, tf.bool),
    }


class _Task:
    """The functions one classification task exposes (its active adapters)."""

    def __init__(self, model):
        self.model = model
        self.class_names = tf.constant(model._output_head().label_names())
        length = model.sequence_length or 512
        self.max_bytes = data_lib.BYTES_PER_TOKEN * int(length)

    def classify_text(self, text):
        text = data_lib.clean_text(tf.reshape(text, [-1]), self.max_bytes)
        probabilities = self.model(self.model.preprocessor(text), training=False)
        probabilities = tf.cast(probabilities, tf.float32)
        label_id = tf.argmax(probabilities, axis=-1)
        return {
            "probabilities": probabilities,
            "label_id": label_id,
            "label": tf.gather(self.class_names, label_id),
        }

    def classify_tokens(self, token_ids, segment_ids, padding_mask):
        inputs = _as_model_inputs(token_ids, segment_ids, padding_mask)
        probabilities = self.model(inputs, training=False)
        return {"probabilities": tf.cast(probabilities, tf.float32)}


def _trace(function, signature):
    # autograph off: plain tensor code, no Python control flow to convert.
    return tf.function(function, input_signature=signature, autograph=False).get_concrete_function()


TEXT_SIGNATURE = [tf.TensorSpec([None], tf.string, name="text")]


def _variables_module(model):
    """A plain tf.Module that tracks the model's variables once.

    Not keras.export.ExportArchive: it stores every variable twice (as the
    Keras variable and as the tf.Variable inside it), doubling the
    SavedModel (185 MB instead of 91 MB for MiniLM). Not the model itself:
    its optimizer state has no place in a serving artifact. The tokenizer's
    tables are constants captured by the traced functions.
    """
    module = tf.Module()
    module.model_variables = list(model.variables)
    return module


def _version_dir(path, version):
    out = Path(path) / str(int(version))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} already exists; TF Serving versions are immutable. Pass another "
            "--version or remove it."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    return str(out)


def _save(module, out, signatures):
    """Save into a hidden temporary folder beside `out`, then rename it.

    TF Serving only loads numbered folders, so a killed export leaves no
    half-written version behind (only a `.tmp-*` folder, which a rerun
    ignores), and the version appears complete or not at all.
    """
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out), prefix=f".tmp-{os.path.basename(out)}-")
    try:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if os.path.isdir(out):  # an empty folder left by an earlier release
            os.rmdir(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def export_saved_model(model, path, version=1, merge=True):
    """Write `path/<version>/` for TF Serving (see module docstring).

    Args:
        model: an `AdapterTextClassifier` with its preprocessor; its active
            adapters are exported.
        path: the model base path (TF Serving's `model_base_path`).
        version: the numbered sub-folder to write.
        merge: fold a lone LoRA/(IA)^3 adapter into the base weights first
            (the given model is not changed; a copy is merged).

    Returns:
        The folder written.
    """
    if model.preprocessor is None:
        raise ValueError("The model has no preprocessor; text signatures need one.")
    out = _version_dir(path, version)
    served = _serving_copy(model, merge)
    task = _Task(served)
    signatures = {
        "serving_default": _trace(task.classify_text, TEXT_SIGNATURE),
        "serve_token_ids": _trace(task.classify_tokens, list(_token_signature().values())),
    }
    return _save(_variables_module(served), out, signatures)


def export_multi_adapter_saved_model(model, path, names=None, version=1):
    """One SavedModel, one backbone, one `classify_<name>` signature per adapter.

    Args:
        model: an `AdapterTextClassifier` holding several named adapters.
        names: the adapters (or fusions) to serve; default: every adapter.
        path, version: as `export_saved_model`.

    The frozen backbone is stored once and shared by every signature, so the
    SavedModel is about one backbone plus the adapters. `serving_default` is
    the first one. The model's active adapters are restored afterwards.
    """
    names = list(names or model.adapter_names)
    if not names:
        raise ValueError("No adapters to export.")
    full = [n for n in names if n in model.adapter_names and not model.adapter_config(n).freezes_backbone]
    if full:
        raise ValueError(
            f"{full} fine-tune the whole backbone and cannot share one; export them on their own."
        )
    out = _version_dir(path, version)
    active = model.active_adapters
    signatures = {}
    try:
        for name in names:
            model.set_active_adapters(model._fusion(name) if name in model.fusion_names else name)
            task = _Task(model)
            signatures[f"classify_{_signature_name(name)}"] = _trace(task.classify_text, TEXT_SIGNATURE)
    finally:
        if active is not None:
            model.set_active_adapters(active)
    signatures["serving_default"] = signatures[f"classify_{_signature_name(names[0])}"]
    return _save(_variables_module(model), out, signatures)


def _signature_name(name):
    return "".join(c if c.isalnum() else "_" for c in name)


def export_run_saved_model(run_dirs, path, version=1, merge=True):
    """Export one run folder, or several (comma list) as a multi-adapter model."""
    run_list = [r for r in str(run_dirs).split(",") if r]
    if len(run_list) == 1:
        return export_saved_model(runs.load_run(run_list[0]), path, version=version, merge=merge)
    model, names = runs.load_runs(run_list)
    return export_multi_adapter_saved_model(model, path, names=names, version=version)


# ------------------------------------------------------------------ TFLite
def export_tflite(model, path, sequence_length=None, quantize="none", merge=True):
    """Write `model.tflite`, `vocab.txt` and `labels.txt` into `path`.

    The token-id path at a fixed sequence length, TFLite built-in ops only
    (no Flex ops). The model has a `serving_default` signature with inputs
    `token_ids`, `segment_ids`, `padding_mask` (int32 [batch, L])
    and output `probabilities`.

    Args:
        quantize: `"none"` (float32) or `"dynamic"` (dynamic-range int8
            weights).
    """
    if quantize not in ("none", "dynamic"):
        raise ValueError(f"quantize must be 'none' or 'dynamic', got {quantize!r}.")
    length = int(sequence_length or model.sequence_length or 128)
    served = _serving_copy(model, merge)
    os.makedirs(path, exist_ok=True)

    signature = [tf.TensorSpec([None, length], tf.int32, name=n) for n in TOKEN_INPUTS]

    @tf.function(input_signature=signature, autograph=False)
    def classify_tokens(token_ids, segment_ids, padding_mask):
        return _Task(served).classify_tokens(token_ids, segment_ids, padding_mask)

    # Freeze the weights into constants first: left as resource variables,
    # the interpreter starts them uninitialised (NaN outputs).
    frozen = convert_variables_to_constants_v2(classify_tokens.get_concrete_function())

    class FrozenModule(tf.Module):
        # Re-wrapped and saved, so the TFLite signature keeps its names.
        @tf.function(input_signature=signature, autograph=False)
        def serve(self, token_ids, segment_ids, padding_mask):
            outputs = frozen(token_ids=token_ids, segment_ids=segment_ids, padding_mask=padding_mask)
            probabilities = outputs["probabilities"] if isinstance(outputs, dict) else outputs[0]
            return {"probabilities": tf.identity(probabilities, name="probabilities")}

    frozen_module = FrozenModule()
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(frozen_module, tmp, signatures={"serving_default": frozen_module.serve})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serving_default"])
        flatbuffer = _convert(converter, quantize)
    model_path = os.path.join(path, "model.tflite")
    with open(model_path, "wb") as f:
        f.write(flatbuffer)
    _write_vocabulary(served, os.path.join(path, "vocab.txt"))
    Path(path, "labels.txt").write_text("\n".join(served._output_head().label_names()) + "\n")
    return model_path


def _convert(converter, quantize):
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _write_vocabulary(model, path):
    tokenizer = model.preprocessor.tokenizer
    vocabulary = tokenizer.get_vocabulary()
    Path(path).write_text("\n".join(vocabulary) + "\n", encoding="utf-8")


def tflite_signature_runner(model_path):
    """A TFLite interpreter's `serving_default` runner (LiteRT if installed)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    interpreter = Interpreter(model_path=str(model_path))
    return interpreter.get_signature_runner("serving_default")


def run_tflite(runner, tokens):
    """Probabilities for a dict of token arrays, one example at a time."""
    rows = []
    for i in range(len(tokens["token_ids"])):
        out = runner(**{k: np.asarray(tokens[k][i : i + 1], np.int32) for k in TOKEN_INPUTS})
        rows.append(out["probabilities"][0])
    return np.stack(rows)
