"""A decoder as a TFLite model: a `step` signature around an explicit KV
cache, and the cache to start from; the app runs the loop.

What TFLite can run of generation is the decoder's step with built-in ops
(the cache write is `DYNAMIC_UPDATE_SLICE`); what it cannot run is the
served SavedModel's `generate` (strings, the tokenizer, a `while_loop`
around a sampler). So the app tokenizes, picks each token from the logits
(greedy, or its own sampling) and feeds it back with the cache:

    state = start()
    out = step(token_ids=[prompt ids], index=state["index"], cache=state["cache"])
    while not done:
        token = argmax(out["logits"])
        out = step(token_ids=[[token]], index=out["index"], cache=out["cache"])

Signatures (batch 1):
- `start`: no inputs -> `cache` float32 `[layers, 2, columns, kv heads,
  head_dim]` and `index` int32 `[1]`, the column the prompt starts at.
- `step`: `token_ids` int32 `[1, n]` (a whole prompt, or one new token;
  the runner resizes), `index`, `cache` -> `logits` float32 `[1,
  vocabulary]` (after the last of the tokens), the `cache` with their keys
  and values written, and `index + n`.

The active adapter is built in: LoRA/(IA)^3/bottleneck units run in the
frozen step; a prefix's keys and values, and a prompt adapter's virtual
tokens' (which see only what precedes them, so they are the same for every
prompt), are already in the starting cache. `columns` = prefix + virtual
tokens + `sequence_length` (the most prompt plus new tokens). Nothing is
padded, so each token's position is its cache column. The cache goes in and
out of every step (a copy of every layer's keys and values); TFLite's
stateful variables would avoid that copy but are not portable across
interpreters yet. The cache has no batch axis because TensorFlow's own TFLite
interpreter slices at most 5-D tensors.

`generation.json` says what the app does around the model: the start and
stop ids, and with `"chat": true` (the adapter trained on templated
prompts) the texts the chat template writes before and after a user
message (`chat_prefix`, `chat_suffix`), to put around each prompt.
"""

import json
import os
import tempfile

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from keras_adapters.backbones.family import family_of
from keras_adapters.core import injection
from keras_adapters.models import decoding
from keras_adapters.runs import generation as generation_runs
from keras_adapters.serving.export import replace_files
from keras_adapters.serving.generator import chat_halves

#: The default most prompt tokens plus new tokens of a TFLite decoder.
SEQUENCE_LENGTH = 256
#: Tokenizer files copied beside the model, where the checkpoint has them.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "tokenizer.model")


class DecoderSteps:
    """The step function and the starting cache of `model`'s active adapter (see module docstring)."""

    def __init__(self, model, sequence_length=None):
        self.model = model
        self.language_model = model.language_model
        self.family = family_of(model.backbone)
        self.prompts, self.prefixes = decoding.split_units(injection.input_units(model.backbone))
        self.before = sum(u.prefix_length for u in self.prefixes)
        self.virtual = sum(u.num_virtual_tokens for u in self.prompts)
        room = None if model.max_positions is None else model.max_positions - self.before - self.virtual
        self.length = int(sequence_length or min(SEQUENCE_LENGTH, room or SEQUENCE_LENGTH))
        self.columns = self.before + self.virtual + self.length
        if room is not None and self.length > room:
            raise ValueError(
                f"sequence_length {self.length} with {self.before + self.virtual} virtual tokens and prefix "
                f"positions needs {self.columns} positions; this backbone has {model.max_positions}: "
                f"pass a sequence_length of {room} or less (--sequence-length)."
            )
        layers, heads, head_dim = self.family.cache_shape(model.backbone)
        # No batch axis: TensorFlow's TFLite interpreter slices at most 5-D tensors.
        self.cache_spec = tf.TensorSpec([layers, 2, self.columns, heads, head_dim], tf.float32, name="cache")

    def _forward(self, x, cache, index):
        """Hidden states of embeddings `x` at cache columns `index`..., and the cache."""
        positions = index + tf.range(tf.shape(x)[1])[None, :]
        x = decoding.positioned(self.language_model, self.family, x, positions)
        mask = tf.ones([1, self.columns], tf.bool)  # causal: a column sees only what is written before it
        layers = [c[None] for c in tf.unstack(tf.cast(cache, self.language_model.compute_dtype), axis=0)]
        hidden, layers = self.family.cached_forward(self.language_model, x, layers, index, mask)
        return hidden, tf.cast(tf.concat(layers, axis=0), tf.float32)

    def step(self, token_ids, index, cache):
        """Tokens `[1, n]` at cache columns `index`...: the last one's next-token logits, the cache, `index + n`."""
        hidden, cache = self._forward(self.family.embed(self.model.backbone, token_ids), cache, index[0])
        logits = self.model.backbone.token_embedding(hidden[:, -1], reverse=True)
        return {"logits": tf.cast(logits, tf.float32), "cache": cache, "index": index + tf.shape(token_ids)[1]}

    def start(self):
        """(the cache before any prompt, the first prompt column): a prefix's keys and
        values, then the virtual tokens' (they see only what precedes them, so they
        are the same for every prompt), zeros after."""
        shape = self.cache_spec.shape
        cache = tf.zeros([*shape[:2], self.columns - self.before, *shape[3:]], tf.float32)
        if self.prefixes:  # [layers, 2, prefix length, kv heads, head_dim] each
            cache = tf.concat([unit.past() for unit in self.prefixes] + [cache], axis=2)
        if self.prompts:
            x, _ = decoding.embed(self.language_model, self.family, tf.zeros([1, 0], tf.int32),
                                  tf.ones([1, 0], tf.bool), self.prompts)
            _, cache = self._forward(x, cache, self.before)
        return cache.numpy(), self.before + self.virtual

    def signature(self):
        return [tf.TensorSpec([1, None], tf.int32, name="token_ids"), tf.TensorSpec([1], tf.int32, name="index"),
                self.cache_spec]

    def settings(self):
        """What the app needs besides the model (`generation.json`)."""
        return {
            "sequence_length": self.length, "cache_columns": self.columns,
            "first_prompt_column": self.before + self.virtual,
            "vocabulary_size": int(self.model.backbone.vocabulary_size),
            "start_token_id": self.model.start_token_id, "stop_token_ids": list(self.model.stop_token_ids),
            **self.chat_settings(),
        }

    def chat_settings(self):
        """Whether the app writes a prompt as a user message under the chat
        template (the adapter trained so), and the texts around its content."""
        if not self.model.chat:
            return {"chat": False}
        before, after = chat_halves(self.model)
        return {"chat": True, "chat_prefix": before, "chat_suffix": after}


def _frozen(function, specs):
    """`function` traced for `specs` with the weights as constants (the TFLite
    interpreter would start resource variables uninitialised)."""
    concrete = tf.function(function, input_signature=specs, autograph=False).get_concrete_function()
    frozen = convert_variables_to_constants_v2(concrete)
    names = [s.name for s in specs]

    def call(*args):
        outputs = frozen(**dict(zip(names, args)))
        if not isinstance(outputs, dict):  # the frozen function's outputs come flat
            outputs = tf.nest.pack_sequence_as(concrete.structured_outputs, tf.nest.flatten(outputs))
        return {key: tf.identity(value, name=key) for key, value in outputs.items()}

    return tf.function(call, input_signature=specs, autograph=False)


def convert(steps, quantize="none"):
    """The TFLite flatbuffer of `steps`: the `step` signature (the weights frozen
    once: about 25x the float32 weights in memory while converting) and `start`
    (the starting cache, a constant)."""
    cache, first = steps.start()
    module = tf.Module()
    module.step = _frozen(steps.step, steps.signature())
    module.start = tf.function(lambda: {"cache": tf.constant(cache), "index": tf.constant([first], tf.int32)},
                               input_signature=[], autograph=False)
    with tempfile.TemporaryDirectory() as tmp:
        # No gradients ride along (TensorFlow's SiLU has a custom one capturing its beta, which cannot be saved).
        tf.saved_model.save(module, tmp, signatures={"step": module.step, "start": module.start},
                            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["start", "step"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantize == "dynamic":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        return converter.convert()


def export_decoder_tflite(model, path, sequence_length=None, quantize="none", tokenizer_folder=None):
    """Write `model.tflite` (signatures `start` and `step`), `generation.json`
    and the checkpoint's tokenizer files (from `tokenizer_folder`, default the
    checkpoint folder the model was loaded from) into `path`.

    Args:
        model: an `AdapterCausalLM`; its active adapter is built in.
        sequence_length: the most prompt tokens plus new tokens (default
            256, or what the backbone's positions leave if fewer).
        quantize: `"none"` (float32) or `"dynamic"` (int8 weights).

    Example:
    ```python
    export_decoder_tflite(model, "app/decoder", sequence_length=256)
    start, step = runners("app/decoder/model.tflite")
    ```
    """
    if quantize not in ("none", "dynamic"):
        raise ValueError(f"quantize must be 'none' or 'dynamic', got {quantize!r}.")
    if not isinstance(model.active_adapters, (str, type(None))):
        raise ValueError(
            f"A TFLite decoder serves one adapter (the active one); the model has {model.active_adapters!r}."
        )
    steps = DecoderSteps(model, sequence_length)
    files = {"model.tflite": convert(steps, quantize), "generation.json": json.dumps(steps.settings(), indent=2) + "\n"}
    tokenizer_folder = tokenizer_folder or model.checkpoint_folder
    for name in TOKENIZER_FILES if tokenizer_folder else ():
        source = os.path.join(tokenizer_folder, name)
        if os.path.isfile(source):
            with open(source, "rb") as f:
                files[name] = f.read()
    replace_files(path, files)
    return os.path.join(path, "model.tflite")


def runners(model_path, interpreter=None):
    """The `start` and `step` signature runners of a TFLite decoder
    (LiteRT's interpreter if installed, else TensorFlow's; or `interpreter`)."""
    if interpreter is None:
        try:
            from ai_edge_litert.interpreter import Interpreter as interpreter
        except ImportError:
            interpreter = tf.lite.Interpreter
    loaded = interpreter(model_path=str(model_path))
    return loaded.get_signature_runner("start"), loaded.get_signature_runner("step")


def greedy(model_path, prompt_ids, max_new_tokens, stop_token_ids=(), interpreter=None):
    """Greedy decoding with a TFLite decoder (what an app's loop does): the new token ids."""
    start, step = runners(model_path, interpreter)
    state = start()
    out = step(token_ids=np.array([prompt_ids], np.int32), index=state["index"], cache=state["cache"])
    tokens = []
    for _ in range(max_new_tokens):
        token = int(np.argmax(out["logits"][0]))
        tokens.append(token)
        if token in stop_token_ids:
            break
        out = step(token_ids=np.array([[token]], np.int32), index=out["index"], cache=out["cache"])
    return tokens


def export_run_tflite(run_dir, path, sequence_length=None, quantize="none"):
    """`export_decoder_tflite` for a causal-LM run folder's adapter."""
    model = generation_runs.load_causal_lm_run(run_dir)
    return export_decoder_tflite(model, path, sequence_length, quantize)
