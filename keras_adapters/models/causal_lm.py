"""`AdapterCausalLM`: named adapters on a pretrained decoder, trained with
`fit` on completions, generating with a KV cache."""

import json
import math
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_adapters.backbones import huggingface
from keras_adapters.backbones.family import families
from keras_adapters.backbones.family import family_of
from keras_adapters.backbones.family import family_of_checkpoint
from keras_adapters.backbones.huggingface import model_type
from keras_adapters.core import composition
from keras_adapters.core import injection
from keras_adapters.io import adapter_folder as adapter_io
from keras_adapters.io import chat_template
from keras_adapters.io import peft_format
from keras_adapters.io import presets
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters import tasks
from keras_adapters.models.decoding import forward as decoder_forward
from keras_adapters.models.decoding import split_units
from keras_adapters.models.generating import GenerationMixin
from keras_adapters.models.tracing import BuildFirstMixin
from keras_adapters.tasks import causal_lm as data_lib

DEFAULT_NAME = "default"
#: The most tokens a training example keeps unless told (fewer where a backbone has fewer positions).
DEFAULT_SEQUENCE_LENGTH = 512
#: The adapter folder inside a run folder (`keras_adapters.runs.folder`), whose
#: `train_config.json` said `chat` before adapter folders did (0.25).
RUN_ADAPTER_DIR = "adapter"


class AdapterCausalLM(GenerationMixin, BuildFirstMixin, keras.Model):
    """A decoder (Llama family: SmolLM2, Llama 3; GPT-2 family; Gemma 3) with named adapters.

    The backbone stays frozen and unchanged; each adapter (LoRA/DoRA/rsLoRA,
    (IA)^3, Houlsby, Pfeiffer, parallel bottlenecks) is a set of units at
    the decoder layers' sites, through the same injection as the encoders'
    (`keras_adapters.core.injection`). Generation is keras-hub's, with a KV
    cache: the units sit where the decoder layers call their sublayers, so
    the cached decoding steps run them too.

    Args:
        backbone: a keras-hub decoder backbone (`Llama3Backbone`, `GPT2Backbone`).
        tokenizer: its keras-hub tokenizer.
        method: the first adapter's method (name, dict or `AdapterConfig`),
            added as `"default"`, active and trainable; `None` for none.
        sequence_length: the most tokens a training example keeps (default
            512, or the backbone's positions if it has fewer).
        preset: where the backbone came from (recorded in adapter folders).
        template: the checkpoint's chat template (Jinja), or `None`.
        special_tokens: the texts of its special tokens, for the template.
        start_token_id: the id put before every text, if the checkpoint does.
        stop_token_ids: the ids that end a generation (default: the
            tokenizer's end token).
        chat: plain-string prompts are user messages under the chat
            template (`generate`, `perplexity`, `dataset` unless told);
            saved with the adapter, so a loaded one is prompted as it was trained.

    Example:
    ```python
    model = AdapterCausalLM.from_preset("SmolLM2-135M-Instruct.Q4_1.gguf", method="lora")
    model.compile()
    model.fit(model.dataset("train.jsonl", shuffle=True), epochs=1)
    model.generate(["Translate to French: Good morning."], max_new_tokens=20, chat=True)
    model.save_adapter("my_adapter")
    ```
    """

    #: The task of its adapters (`keras_adapters.tasks`).
    default_task = tasks.CAUSAL_LM

    def __init__(self, backbone, tokenizer=None, method="lora", sequence_length=None, preset=None, template=None,
                 special_tokens=None, start_token_id=None, stop_token_ids=None, chat=False, **kwargs):
        super().__init__(**kwargs)
        family = family_of(backbone)
        if family.language_model is None:
            raise ValueError(f"{family.name} backbones are encoders: use AdapterModel (they do not generate text).")
        self.language_model = family.language_model(backbone)
        self._family = family
        self._sampler = self._decode = None
        self.tokenizer = tokenizer
        positions = (family.max_positions(backbone) if family.max_positions else None) or DEFAULT_SEQUENCE_LENGTH
        self.sequence_length = int(sequence_length or min(DEFAULT_SEQUENCE_LENGTH, positions))
        self.preset = preset
        self.template = template
        self.special_tokens = dict(special_tokens or {})
        self.start_token_id = start_token_id
        if start_token_id is not None and "bos_token" in self.special_tokens:
            # The start id goes in as an id (as Hugging Face tokenizes a rendered chat with
            # add_special_tokens=False): a template's `{{ bos_token }}` written as text would be
            # read as characters by tokenizers that keep it a control piece (Gemma's SentencePiece).
            self.special_tokens["bos_token"] = ""
        if stop_token_ids is None and tokenizer is not None:
            stop_token_ids = (tokenizer.end_token_id,)
        self.stop_token_ids = tuple(stop_token_ids or ())
        self.chat = bool(chat)
        # The checkpoint's own weights, before any adapter's are among them.
        self._fingerprint = presets.weights_fingerprint(backbone)
        self._nll_function = None
        self.merged_adapter = None
        self.checkpoint_folder = None
        if method is not None:
            self.add_adapter(DEFAULT_NAME, method)
            self.train_adapter(DEFAULT_NAME)

    @classmethod
    def from_preset(cls, preset, method="lora", sequence_length=None, dtype=None, load_weights=True, chat=False):
        """A decoder checkpoint (a Hugging Face Llama, GPT-2 or Gemma 3 folder,
        or a Llama or Gemma 3 `.gguf` file, converted once into a cached folder)
        with its tokenizer and chat template, and a first adapter of `method`
        (`None`: none); `chat`: plain prompts go under the chat template."""
        folder = presets.resolve_preset(preset)
        family = family_of_checkpoint(model_type(folder))
        if family is None or family.language_model is None:
            decoders = sorted(t for f in families() if f.language_model is not None for t in f.model_types)
            raise ValueError(
                f"{preset!r} is not a decoder checkpoint keras-adapters adapts (config.json model_type "
                f"{model_type(folder)!r}; AdapterCausalLM takes {decoders}, or a Llama or Gemma 3 .gguf file)."
            )
        backbone = presets.load_backbone(folder, dtype=dtype, load_weights=load_weights)
        tokenizer = family.tokenizer(folder)
        template, special_tokens = chat_template.read_settings(folder)
        model = cls(
            backbone, tokenizer, method=method, sequence_length=sequence_length,
            preset=presets.preset_reference(preset), template=template, special_tokens=special_tokens,
            start_token_id=huggingface.start_token_id(folder, tokenizer),
            stop_token_ids=huggingface.stop_token_ids(folder, tokenizer), chat=chat,
        )
        model.checkpoint_folder = folder  # its tokenizer files go beside a TFLite export
        return model

    @classmethod
    def from_adapter(cls, directory, preset=None, dtype=None):
        """A model with the adapter saved in `directory`, active (the backbone
        from the recorded preset, or `preset`: the same checkpoint, checked).
        A peft folder names its base model on the Hugging Face Hub, which is
        not read here: pass `preset`, that checkpoint's folder or GGUF file."""
        if peft_format.is_peft_folder(directory):
            if preset is None:
                raise ValueError(
                    f"{directory} is a peft adapter of {peft_format.PeftFolder.base_of(directory)!r}: pass preset=, "
                    "that checkpoint's Hugging Face folder or .gguf file."
                )
            config = {"task": {}}
        else:
            config = adapter_io.read_config(directory)
            decoder_task(config, str(directory))  # an encoder's is refused before any checkpoint loads
        model = cls.from_preset(
            preset if preset is not None else config["backbone"]["preset"], method=None,
            sequence_length=config["task"].get("sequence_length"), dtype=dtype,
        )
        model.chat = trained_chat(directory, config["task"])
        model.train_adapter(model.load_adapter(directory))
        model.compile()
        return model

    @property
    def backbone(self):
        return self.language_model.backbone

    @property
    def task(self):
        """The task of its adapters (every one: a decoder's head is its own token output)."""
        return self.default_task

    def privacy_report(self):
        """`None`: decoder adapters train without differential privacy here."""
        return None

    @property
    def max_positions(self):
        """The most positions (virtual tokens, prefix, prompt and new tokens)
        a row may have: a GPT-2's position table; `None` for rotary decoders."""
        return self._family.max_positions(self.backbone) if self._family.max_positions else None

    def _check_positions(self, tokens, what, fix):
        """Refuse `tokens` positions (plus the active input-end units') past the
        position table; `fix(room)` says what to lower, `room` being the most `tokens` that fit."""
        units = injection.input_units(self.backbone)
        prompts, prefixes = split_units(units)
        used = tokens + sum(u.num_virtual_tokens for u in prompts) + sum(u.prefix_length for u in prefixes)
        if self.max_positions is not None and used > self.max_positions:
            raise ValueError(
                f"{what} need {used} positions (with the active adapters' virtual tokens and prefix), more than "
                f"the {self.max_positions} this backbone's position embeddings have; "
                + fix(self.max_positions - used + tokens) + "."
            )

    def build(self, input_shape=None):
        self.built = True  # the language model is built with its backbone

    def call(self, inputs, training=False):
        units = injection.input_units(self.backbone)
        if not units:
            return self.language_model(inputs, training=training)
        # Virtual tokens in front of each row, or a prefix in the cache (peft's prompt and prefix tuning).
        hidden = decoder_forward(self.language_model, self._family, inputs["token_ids"], inputs["padding_mask"], units)
        return self.backbone.token_embedding(hidden, reverse=True)

    # ------------------------------------------------------------- adapters
    @property
    def adapter_names(self):
        state = injection.get_state(self.backbone)
        return list(state.configs) if state is not None else []

    @property
    def active_adapters(self):
        state = injection.get_state(self.backbone)
        return state.active if state is not None else None

    def adapter_config(self, name=DEFAULT_NAME):
        return injection.adapter_config(self.backbone, name)

    def add_adapter(self, name, method="lora"):
        """Add a named adapter (not active, frozen)."""
        config = get_adapter_config(method).prepare(self.tokenizer, int(self.backbone.vocabulary_size))
        injection.add_adapter(self.backbone, name, config)
        self._reset_functions()

    def delete_adapter(self, name):
        injection.delete_adapter(self.backbone, name)
        self._reset_functions()

    def set_active_adapters(self, spec):
        """What the model computes: an adapter name, a composition block
        (`ka.Stack`, `ka.Average`, ...), or `None` (the plain backbone)."""
        injection.set_active(self.backbone, spec)
        self._reset_functions()

    def train_adapter(self, name):
        """Activate `name` and let only its weights train."""
        injection.set_active(self.backbone, name)
        injection.set_trainable(self.backbone, composition.adapter_names(composition.parse(name)))
        self._reset_functions()

    def merge_adapter(self, name=DEFAULT_NAME):
        """Fold a LoRA / (IA)^3 adapter into the backbone's weights (then the
        backbone is no longer the checkpoint: adapters cannot be saved)."""
        injection.merge_adapter(self.backbone, name)
        self.merged_adapter = name
        self._reset_functions()

    def _reset_functions(self):
        # Which adapters are active is read when a function is traced.
        self._decode = None
        self.train_function = self.test_function = self.predict_function = None
        self._nll_function = None

    # ------------------------------------------------------------- training
    def compile(self, optimizer="auto", learning_rate=None, **kwargs):
        """AdamW at the active adapter's method's default learning rate, and
        the mean negative log-likelihood of the completion tokens (the loss;
        `nll` among the metrics: the same mean over all of an epoch's tokens)."""
        if optimizer == "auto":
            names = composition.adapter_names(self.active_adapters) if self.active_adapters else []
            default = self.adapter_config(names[0]).default_learning_rate if names else 1e-4
            optimizer = keras.optimizers.AdamW(learning_rate=learning_rate or default, weight_decay=0.0)
        kwargs.setdefault(
            "loss", keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")
        )
        # `nll` is the mean over every completion token of the data; Keras' `loss` averages per-batch
        # means, which weighs a token of a short batch more (runs pick their best epoch by `val_nll`).
        kwargs.setdefault("weighted_metrics", [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                                               keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="nll")])
        super().compile(optimizer=optimizer, **kwargs)

    def fit(self, x=None, y=None, **kwargs):
        kwargs.setdefault("shuffle", False)  # `dataset(shuffle=True)` shuffles; Keras cannot shuffle a tf.data
        return super().fit(x, y, **kwargs)

    def dataset(self, data, batch_size=8, shuffle=False, chat=None, seed=0, bucket_by_sequence_length=False):
        """Batches of `(inputs, next tokens, completion weights)` from a JSONL
        file or a list of records (see `keras_adapters.tasks.causal_lm`;
        `bucket_by_sequence_length` batches examples of similar length)."""
        self._check_positions(self.sequence_length, f"Examples of sequence_length {self.sequence_length}",
                              lambda room: f"pass sequence_length={room} or less")
        records = data_lib.read(data) if isinstance(data, (str, bytes)) or hasattr(data, "__fspath__") else [
            data_lib.check_record(r, f"record {i}") for i, r in enumerate(data)
        ]
        return data_lib.dataset(
            records, self.tokenizer, self.sequence_length, batch_size=batch_size, template=self.template,
            special_tokens=self.special_tokens, chat=self.chat if chat is None else chat, end_token_id=self.tokenizer.end_token_id,
            start_token_id=self.start_token_id, shuffle=shuffle, seed=seed,
            bucket_by_sequence_length=bucket_by_sequence_length,
        )

    def perplexity(self, data, batch_size=8, chat=None):
        """`{"perplexity", "loss", "tokens"}` of the completions in `data` (the
        mean negative log-likelihood per completion token, summed in float64)."""
        total, count = 0.0, 0.0
        for inputs, labels, weights in self.dataset(data, batch_size=batch_size, chat=chat):
            nll = self._token_nll(inputs, labels).numpy().astype(np.float64)
            total += float(np.sum(nll * weights.numpy()))
            count += float(np.sum(weights.numpy()))
        if not count:
            raise ValueError(
                "No completion tokens to score: every example's prompt fills its sequence_length "
                f"({self.sequence_length} tokens); raise sequence_length or shorten the prompts."
            )
        loss = total / count
        return {"perplexity": math.exp(loss), "loss": loss, "tokens": int(count)}

    def _token_nll(self, inputs, labels):
        if self._nll_function is None:

            @tf.function(reduce_retracing=True)
            def nll(inputs, labels):
                logits = tf.cast(self(inputs, training=False), tf.float32)
                return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

            self._nll_function = nll
        return self._nll_function(inputs, labels)

    # generate, prompt_texts: GenerationMixin (keras_adapters.models.generating)

    # -------------------------------------------------------- adapter files
    @property
    def backbone_fingerprint(self):
        return self._fingerprint

    def _backbone_record(self):
        return {
            "preset": self.preset,
            "architecture": presets.architecture_config(self.backbone),
            "weights_sha256": self.backbone_fingerprint,
            "tokenizer": presets.tokenizer_config(self.tokenizer),
        }

    def save_adapter(self, directory, name=None):
        """Write one adapter to a small folder (`adapter_config.json`,
        `adapter_model.safetensors`; see `keras_adapters.io.adapter_folder`)."""
        name = name or self._single_active()
        self._check_not_merged()
        config = {
            "name": name,
            "backbone": self._backbone_record(),
            "task": {"type": self.task, "sequence_length": self.sequence_length, "chat": self.chat},
            "method": self.adapter_config(name).as_saved().get_config(),
        }
        weights = injection.adapter_weights_by_key(self.backbone, name)
        tensors = {k: w.numpy() for k, w in weights.items()}
        return adapter_io.replace_folder(directory, lambda tmp: adapter_io.write_folder(tmp, config, tensors))

    def _check_not_merged(self):
        if self.merged_adapter is not None:
            raise ValueError(
                f"The adapter {self.merged_adapter!r} was merged into this model's backbone, which is no longer the "
                "checkpoint adapters are saved for and loaded onto; use a fresh model (from_preset)."
            )

    def _single_active(self):
        active = self.active_adapters
        if not isinstance(active, str):
            raise ValueError(f"Name the adapter to save; the active adapters are {active!r}.")
        return active

    def load_adapter(self, directory, name=None):
        """Add the adapter saved in `directory`; returns its name (not activated).

        Our folders are checked: the file's sha256, the backbone checkpoint
        and tokenizer it was trained with, every tensor's name and shape. A
        Hugging Face peft folder of a causal LM (`task_type: CAUSAL_LM`;
        LoRA, rsLoRA, DoRA, (IA)^3 or prompt tuning, `keras_adapters.io.peft_format`)
        loads too (and PREFIX_TUNING): it records no checkpoint fingerprint, so the backbone must
        be the one it was trained on (shapes are checked).
        """
        self._check_not_merged()
        source = str(directory)
        config, tensors_for = self._read_adapter_source(directory)
        name = name or config.get("name") or DEFAULT_NAME
        trained = config.get("task", {}).get("chat")
        if trained is not None and bool(trained) != self.chat:
            warnings.warn(
                f"{source} was trained with chat={bool(trained)}, and this model writes plain prompts with "
                f"chat={self.chat}: set model.chat = {bool(trained)} to prompt it as it was trained.", stacklevel=2)
        self.add_adapter(name, adapter_io.method_config(config, source))
        weights = injection.adapter_weights_by_key(self.backbone, name)
        try:
            shapes = {k: tuple(w.shape) for k, w in weights.items()}
            tensors = tensors_for(shapes)
            adapter_io.check_tensors(shapes, tensors, source)
        except adapter_io.AdapterFormatError:
            self.delete_adapter(name)
            raise
        for key, variable in weights.items():
            variable.assign(tensors[key].astype(variable.dtype))
        return name

    def _read_adapter_source(self, directory):
        """(config, tensors for the expected shapes) of our folder or a peft one."""
        source = str(directory)
        if peft_format.is_peft_folder(directory):
            task = tasks.get_task(self.task)
            peft = peft_format.PeftFolder(directory, {task.peft_task_type: task.name}, family=family_of(self.backbone),
                                          head=False)
            return peft.config, peft.tensors
        config, tensors = adapter_io.read_folder(directory)
        task = decoder_task(config, source)
        adapter_io.warn_unknown_keys(config, source, task.head_settings)
        adapter_io.check_backbone(config, presets.architecture_config(self.backbone), self.backbone_fingerprint, source)
        adapter_io.check_tokenizer(config, presets.tokenizer_config(self.tokenizer), source)
        return config, lambda shapes: tensors


def decoder_task(config, source):
    """The task of one of our folders (its JSON `config`), refused when an encoder's."""
    task = tasks.get_task(adapter_io.task_type(config, source, tasks.available_tasks()))
    if not task.decoder:
        raise adapter_io.AdapterFormatError(
            f"{source} holds a {task.cli_name} adapter; a causal LM loads a decoder's adapters "
            "(load that one with AdapterModel)."
        )
    return task


def trained_chat(directory, record):
    """Whether the adapter was trained on templated prompts: its folder says
    (0.26 and later), or else, for a run's `adapter/` folder, the run's
    `train_config.json`."""
    if "chat" in record:
        return bool(record["chat"])
    run_config = Path(directory).parent / "train_config.json"
    if Path(directory).name != RUN_ADAPTER_DIR or not run_config.is_file():
        return False
    try:
        return bool(json.loads(run_config.read_text(encoding="utf-8")).get("chat"))
    except (OSError, ValueError, AttributeError):
        return False
