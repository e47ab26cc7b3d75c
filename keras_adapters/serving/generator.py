"""A SavedModel that generates text: tokenization, cached decoding and
detokenization in one graph, and per-row adapter routing.

The `generate` signature takes `prompt` (strings), `max_new_tokens`,
`temperature`, `top_k` and `top_p` (scalars; `temperature` 0 is greedy
decoding, `top_k` 0 and `top_p` 1 filter nothing) and, when several
adapters are served, `adapter` (a name per row), and answers `text`: what
each prompt continues with, up to the end token. The decoding loop of
`keras_adapters.models.decoding` (left-padded prompts, one forward to fill
the KV cache, a `while_loop` of cached steps) runs inside the graph; with
several adapters the backbone runs once per step for the whole batch, each
row through its own adapter's weights (`ka.Route`: LoRA deltas gathered per
row and never merged, as S-LoRA and Punica serve many LoRA adapters).

A checkpoint's chat template is Jinja, which a graph cannot run; with
`chat=True` the export renders it once around a placeholder and the graph
puts each prompt between the two halves (templates that write a user
message's content as it is, as ChatML and Llama's do).
"""

import functools

import keras_hub
import tensorflow as tf

from keras_adapters.backbones.family import family_of
from keras_adapters.core import composition
from keras_adapters.core import injection
from keras_adapters.models import decoding
from keras_adapters.models.generating import PROMPT_STEP
from keras_adapters.runs import generation as generation_runs
from keras_adapters.serving import export as export_lib
from keras_adapters.tasks.routing import ADAPTER_SPEC
from keras_adapters.tasks.routing import NameTable

_PLACEHOLDER = "\x00prompt\x00"
SETTINGS = (
    tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    tf.TensorSpec([], tf.float32, name="temperature"),
    tf.TensorSpec([], tf.int32, name="top_k"),
    tf.TensorSpec([], tf.float32, name="top_p"),
)
PROMPT_SPEC = tf.TensorSpec([None], tf.string, name="prompt")
#: The default most prompt tokens plus new tokens a served request may ask for.
SEQUENCE_LENGTH = 4096


class ServingSampler(keras_hub.samplers.Sampler):
    """The next token from tensors the request gives: the most likely one at
    `temperature` 0, else a draw at `temperature` among the `top_k` most
    likely tokens (0: all) whose probabilities sum to `top_p`."""

    def __init__(self, temperature, top_k, top_p):
        super().__init__()
        self.settings = (temperature, top_k, top_p)

    def compute_probabilities(self, logits):
        return tf.cast(logits, tf.float32)  # the filters below work on logits

    def get_next_token(self, logits):
        # Only one branch runs: greedy requests skip the sort over the whole vocabulary
        # (262,144 tokens a row on Gemma 3, at every step).
        return tf.cond(self.settings[0] > 0, lambda: self._sampled(logits),
                       lambda: tf.argmax(logits, axis=-1, output_type=tf.int32))

    def _sampled(self, logits):
        temperature, top_k, top_p = self.settings
        vocabulary = tf.shape(logits)[-1]
        k = tf.where(top_k > 0, tf.minimum(top_k, vocabulary), vocabulary)
        values, indices = tf.math.top_k(logits, k=k)
        scaled = values / tf.maximum(temperature, 1e-6)
        probabilities = tf.nn.softmax(scaled)
        # Keep the smallest prefix whose probability reaches top_p, and always the likeliest token
        # (top_p 0 is greedy, as in transformers).
        before = tf.cumsum(probabilities, axis=-1, exclusive=True)
        keep = (before < top_p) | (tf.range(tf.shape(scaled)[-1]) == 0)[None, :]
        scaled = tf.where(keep, scaled, tf.fill(tf.shape(scaled), -1e9))
        choice = tf.random.categorical(scaled, 1, dtype=tf.int32)
        return tf.gather(indices, choice, batch_dims=1)[:, 0]


def chat_halves(model):
    """(prefix, suffix) the chat template writes around one user message's content."""
    if model.template is None:
        raise ValueError("This checkpoint has no chat template; export without chat.")
    text = model.prompt_texts([_PLACEHOLDER], chat=True)[0]
    if text.count(_PLACEHOLDER) != 1:
        raise ValueError("The chat template does not write a user message's content as it is; export without chat.")
    prefix, suffix = text.split(_PLACEHOLDER)
    return prefix, suffix


class Generator:
    """The traced functions of a generating SavedModel (see module docstring)."""

    def __init__(self, model, names=None, chat=False, sequence_length=SEQUENCE_LENGTH, xla=False):
        self.model = model
        # A family with position embeddings (GPT-2) has no positions past its table.
        self.sequence_length = min(int(sequence_length), model.max_positions or int(sequence_length))
        self.language_model = model.language_model
        self.family = family_of(model.backbone)
        self.tokenizer = model.tokenizer
        self.halves = chat_halves(model) if chat else ("", "")
        self.stop_token_ids = tuple(model.stop_token_ids)
        self.names = names
        self.table = NameTable(names) if names else None
        self.xla = xla
        # Compiled per prompt width (a multiple of PROMPT_STEP), batch size and max_new_tokens.
        self._decode = tf.function(self._decode_rows, jit_compile=True) if xla else self._decode_rows

    @property
    def signature(self):
        return [PROMPT_SPEC, *SETTINGS, *([ADAPTER_SPEC] if self.table is not None else [])]

    def prompt_ids(self, prompt):
        prefix, suffix = self.halves
        texts = tf.strings.join([prefix, prompt, suffix]) if prefix or suffix else prompt
        ids = tf.cast(self.tokenizer(texts), tf.int32)
        if self.model.start_token_id is not None:  # unless the text (its template) starts with it
            start = tf.constant(self.model.start_token_id, tf.int32)
            missing = tf.cast(ids.to_tensor(default_value=-1, shape=[None, 1])[:, 0] != start, tf.int32)
            # Tokenizers differ in their row splits' dtype (SentencePiece's int32, BPE's int64).
            starts = tf.RaggedTensor.from_row_lengths(tf.fill([tf.reduce_sum(missing)], start),
                                                      tf.cast(missing, ids.row_splits.dtype))
            ids = tf.concat([starts, ids], axis=1)
        return ids

    def _decode_rows(self, ids, lengths, max_new_tokens, temperature, top_k, top_p, row_ids=None):
        """The new tokens of right-padded prompt ids (each row through adapter `row_ids[i]` when routed)."""
        sampler = ServingSampler(temperature, top_k, top_p)
        units = injection.input_units(self.model.backbone)
        decode = functools.partial(decoding.generate, self.language_model, self.family, ids, lengths,
                                   max_new_tokens, sampler, self.stop_token_ids, units)
        if row_ids is None:
            return decode()
        with injection.routing(self.model.backbone, row_ids):
            return decode()

    def generate(self, prompt, max_new_tokens, temperature, top_k, top_p, adapter=None):
        ragged = self.prompt_ids(tf.reshape(prompt, [-1]))
        lengths = tf.cast(ragged.row_lengths(), tf.int32)
        ids = ragged.to_tensor(default_value=0)
        units = injection.input_units(self.model.backbone)
        prompts, prefixes = decoding.split_units(units)
        virtual = sum(u.num_virtual_tokens for u in prompts) + sum(u.prefix_length for u in prefixes)
        # The KV cache holds rows x (prompt + new tokens): a request past the limit is refused, not served out of memory.
        checks = [
            tf.debugging.assert_positive(max_new_tokens, message="max_new_tokens must be at least 1"),
            tf.debugging.assert_positive(lengths, message="a prompt has no tokens: pass some text"),
            tf.debugging.assert_less_equal(
                tf.shape(ids)[1] + virtual + max_new_tokens, self.sequence_length,
                message=f"a prompt's tokens plus max_new_tokens exceed {self.sequence_length}, the most this "
                        "model was exported for (ask for fewer tokens, or export with a larger sequence_length"
                        + (f", up to the {self.model.max_positions} positions its backbone has)"
                           if self.model.max_positions else ")"),
            ),
        ]
        with tf.control_dependencies(checks):
            ids = tf.identity(ids)
        if self.xla:  # few shapes to compile: prompts padded to a multiple of PROMPT_STEP tokens
            width = -(-tf.shape(ids)[1] // PROMPT_STEP) * PROMPT_STEP
            ids = tf.pad(ids, [[0, 0], [0, width - tf.shape(ids)[1]]])
        row_ids = None if self.table is None else self.table.ids(adapter, tf.shape(ids)[0])
        tokens = self._decode(ids, lengths, max_new_tokens, temperature, top_k, top_p, row_ids)
        is_stop = tf.reduce_any(tokens[..., None] == tf.constant(self.stop_token_ids, tf.int32), axis=-1)
        stopped = tf.cumsum(tf.cast(is_stop, tf.int32), axis=1) > 0
        return {"text": self.tokenizer.detokenize(tf.ragged.boolean_mask(tokens, ~stopped))}


def export_generator(model, path, version=None, names=None, chat=None, sequence_length=SEQUENCE_LENGTH, xla=False):
    """Write `path/<version>/`: a SavedModel with the `generate` signature.

    Args:
        model: an `AdapterCausalLM`; its active adapter is served, or with
            `names`, those adapters routed per row (LoRA, (IA)^3 and
            bottleneck adapters route; `ka.Route`).
        path: the model base path (TF Serving's `model_base_path`).
        version: the numbered sub-folder (default: the next one).
        chat: write each prompt as a user message under the chat template
            (`None`: as the model's `chat` says, how its adapter was trained).
        sequence_length: the most prompt tokens plus `max_new_tokens` a
            request may ask for (the KV cache's length); at most the
            backbone's positions where it has a table of them (GPT-2).
        xla: compile the decoding loop with XLA (`jit_compile`; once per
            batch size, prompt width rounded up to a multiple of 16 tokens and
            `max_new_tokens`). TF Serving runs such a model only when started
            with `--xla_cpu_compilation_enabled=true`.

    Example:
    ```python
    export_generator(model, "serving/smollm2", names=["french", "german"], chat=True)
    # serving: generate(prompt=["Good morning"], max_new_tokens=32, temperature=0.0, top_k=0, top_p=1.0,
    #                   adapter=["french"])
    ```
    """
    out = export_lib.version_dir(path, version)
    active = model.active_adapters
    if names:
        model.set_active_adapters(composition.Route(*names))
    try:
        generator = Generator(model, names, model.chat if chat is None else chat, sequence_length, xla)
        signatures = {"generate": export_lib.trace(generator.generate, generator.signature)}
        signatures["serving_default"] = signatures["generate"]
        module = export_lib.graph_module(signatures, model.language_model.variables, tokenizer=model.tokenizer,
                                         **({"table": generator.table.table} if names else {}))
        return export_lib.save(module, out, signatures)
    finally:
        model.set_active_adapters(active)


def export_runs(run_dirs, path, version=None, sequence_length=None, xla=False):
    """`export_generator` for causal-LM runs (`RUN_A,RUN_B`: routed, each row
    naming a run), with the chat template when the runs trained with it;
    `sequence_length` as `export_generator`'s (default `SEQUENCE_LENGTH`)."""
    options = {"sequence_length": sequence_length or SEQUENCE_LENGTH, "xla": xla}
    run_list = [r for r in str(run_dirs).split(",") if r]
    if len(run_list) == 1:
        return export_generator(generation_runs.load_causal_lm_run(run_list[0]), path, version, **options)
    model, names = generation_runs.load_causal_lm_runs(run_list)
    return export_generator(model, path, version, names=names, **options)
