"""Prompt tuning, the input-end adapter (Lester et al. 2021).

A prompt adapter owns `num_virtual_tokens` trainable vectors. They are
inserted right after `[CLS]` into the *embedding output* (what the first
encoder layer receives: token + position + segment embeddings after their
layer norm), and the padding mask grows with them. The real tokens keep the
positions they have without the prompt, `[CLS]` stays first, and the virtual
tokens are taken out of the sequence output again, so the heads see the
usual `[batch, length, hidden]` (mean pooling averages the real tokens only).
"""

import dataclasses
from typing import ClassVar

import keras
import numpy as np
from keras import ops

from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.base import check_choice
from keras_adapters.methods.base import check_positive_int

PROMPT_INITS = ("vocab", "text", "random")

#: The backbone attributes the embedding output is computed from (keras-hub
#: `BertBackbone`), in the order they are applied.
EMBEDDING_LAYERS = (
    "token_embedding",
    "position_embedding",
    "segment_embedding",
    "embeddings_add",
    "embeddings_layer_norm",
    "embeddings_dropout",
)


def embedding_output(backbone, token_ids, segment_ids, training=False):
    """What keras-hub's `BertBackbone` feeds its first encoder layer."""
    tokens = backbone.token_embedding(token_ids)
    positions = backbone.position_embedding(tokens)
    segments = backbone.segment_embedding(segment_ids)
    x = backbone.embeddings_add((tokens, positions, segments))
    x = backbone.embeddings_layer_norm(x)
    return backbone.embeddings_dropout(x, training=training)


@keras.saving.register_keras_serializable(package="keras_adapters")
class PromptEmbedding(WrappedLayer):
    """Trainable virtual tokens for the embedding output.

    Args:
        base: unused (`None`): the unit sits at the backbone's input.
        num_virtual_tokens: how many vectors.
        initial: `None` (random normal, stddev 0.02, BERT's initialiser)
            or an array `[num_virtual_tokens, hidden]` the vectors start as.

    Example:
    ```python
    prompt = PromptEmbedding(None, 4)
    prompt.build((None, None, 384))
    x, mask = prompt.insert(embedded, padding_mask)
    ```
    """

    def __init__(self, base, num_virtual_tokens, initial=None, **kwargs):
        super().__init__(base, **kwargs)
        self.num_virtual_tokens = num_virtual_tokens
        self.initial = initial

    def build(self, input_shape):
        hidden = int(input_shape[-1])
        self.prompt = self.add_weight(
            name="prompt",
            shape=(self.num_virtual_tokens, hidden),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        if self.initial is not None:
            self.prompt.assign(ops.cast(self.initial, "float32"))

    def insert(self, x, padding_mask):
        """`x` ([batch, length, hidden]) with the prompt after position 0,
        and the padding mask with the prompt's positions on."""
        batch = ops.shape(x)[0]
        prompt = ops.broadcast_to(
            ops.expand_dims(ops.cast(self.prompt, x.dtype), 0), (batch, self.num_virtual_tokens, ops.shape(x)[-1])
        )
        x = ops.concatenate([x[:, :1], prompt, x[:, 1:]], axis=1)
        on = ops.ones((batch, self.num_virtual_tokens), padding_mask.dtype)
        return x, ops.concatenate([padding_mask[:, :1], on, padding_mask[:, 1:]], axis=1)

    def call(self, inputs):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["num_virtual_tokens"] = self.num_virtual_tokens
        return config

    @classmethod
    def from_config(cls, config):
        return cls(None, **config)


def remove_virtual_tokens(sequence, count):
    """The sequence output without the `count` positions after `[CLS]`."""
    return ops.concatenate([sequence[:, :1], sequence[:, 1 + count :]], axis=1)


@dataclasses.dataclass
class PromptConfig(AdapterConfig):
    """Prompt tuning: trainable virtual tokens at the model's input end.

    Args:
        num_virtual_tokens: how many vectors are inserted after `[CLS]`.
        init: `"vocab"` (each vector starts as the embedding output of a
            token drawn at random from the vocabulary, as in the paper,
            taken at position 1),
            `"text"` (the tokens of `init_text`, repeated to fill), or
            `"random"` (normal, stddev 0.02).
        init_text: the text for `init="text"`, e.g. `"Classify the topic
            of this article:"`.
        init_token_ids: the token ids the vectors start from; filled in from
            `init`/`init_text` when the adapter is added to a model.
        seed: draws the `"vocab"` tokens.

    Example:
    ```python
    PromptConfig(num_virtual_tokens=20, init="text", init_text="Topic of this article:")
    ```
    """

    method: ClassVar[str] = "prompt"
    default_sites: ClassVar[tuple] = ("embedding_output",)
    #: Acts on the backbone's input, not inside its encoder layers.
    input_end: ClassVar[bool] = True
    changes_sequence: ClassVar[bool] = True
    default_learning_rate: ClassVar[float] = 3e-2

    num_virtual_tokens: int = 20
    init: str = "vocab"
    init_text: str | None = None
    init_token_ids: tuple | None = None
    seed: int = 0

    def validate(self):
        super().validate()
        check_positive_int("PromptConfig", "num_virtual_tokens", self.num_virtual_tokens)
        check_choice("PromptConfig", "init", self.init, PROMPT_INITS)
        if self.init == "text" and not (self.init_text and str(self.init_text).strip()):
            raise ValueError('PromptConfig(init="text") needs init_text, e.g. "Classify the topic of this article:".')
        if self.init_token_ids is not None:
            self.init_token_ids = tuple(int(i) for i in self.init_token_ids)
            if len(self.init_token_ids) != self.num_virtual_tokens:
                raise ValueError(
                    f"PromptConfig.init_token_ids has {len(self.init_token_ids)} ids for "
                    f"{self.num_virtual_tokens} virtual tokens."
                )

    def prepare(self, tokenizer, vocabulary_size):
        """This config with `init_token_ids` chosen (from `init`), if not yet."""
        if self.init == "random" or self.init_token_ids is not None:
            return self
        if self.init == "vocab":
            ids = np.random.default_rng(self.seed).integers(0, vocabulary_size, self.num_virtual_tokens)
        else:
            if tokenizer is None:
                raise ValueError('PromptConfig(init="text") needs a model with a tokenizer (a preprocessor).')
            ids = np.asarray(ops.convert_to_numpy(tokenizer(self.init_text))).reshape(-1)
            if not len(ids):
                raise ValueError(f"init_text {self.init_text!r} has no tokens.")
            ids = np.resize(ids, self.num_virtual_tokens)  # repeated to fill, as peft does
        return dataclasses.replace(self, init_token_ids=tuple(int(i) for i in ids))

    def wrap(self, site, base, *, dtype, hidden_dim, shared):
        """`base` is the backbone: each vector starts as its embedding output
        of one of `init_token_ids`, as if that token came right after `[CLS]`
        (position 1, segment 0; the virtual tokens have no position of their
        own)."""
        initial = None
        if self.init_token_ids is not None:
            ids = np.stack([np.zeros(self.num_virtual_tokens, "int32"), np.asarray(self.init_token_ids, "int32")], 1)
            initial = ops.convert_to_numpy(embedding_output(base, ids, np.zeros_like(ids))[:, 1])
        return PromptEmbedding(None, self.num_virtual_tokens, initial=initial, dtype=dtype, name="prompt")
