"""Prompt tuning, the input-end adapter (Lester et al. 2021).

A prompt adapter owns `num_virtual_tokens` trainable vectors, placed one of
two ways:

- `"after_cls"` (the default): inserted right after `[CLS]` into the
  *embedding output* (what the first encoder layer receives: token +
  position + segment embeddings after their layer norm). The real tokens
  keep the positions they have without the prompt and `[CLS]` stays first,
  so BERT's pooler still reads `[CLS]`.
- `"before_cls"` (peft's `PROMPT_TUNING`): word-embedding vectors put in
  front of `[CLS]`; then the sequence gets its position embeddings (the
  real tokens move `num_virtual_tokens` positions on), segment 0 for the
  virtual tokens, and the layer norm, as `BertEmbeddings` computes for
  peft's `inputs_embeds`. BERT's pooler reads the first position, which
  is now the first virtual token.

Either way the padding mask grows with the prompt and the virtual tokens
are taken out of the sequence output again, so the heads see the usual
`[batch, length, hidden]` (mean pooling averages the real tokens only).
"""

import dataclasses
from typing import ClassVar

import keras
import numpy as np
from keras import ops

from keras_adapters.backbones.family import family_of
from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.base import InputEndUnit
from keras_adapters.methods.base import check_choice
from keras_adapters.methods.base import check_positive_int

PROMPT_INITS = ("vocab", "text", "random")
PROMPT_PLACEMENTS = ("after_cls", "before_cls")
#: The adapter-folder key of a prompt adapter's vectors `[virtual tokens, hidden]`.
PROMPT_KEY = "embeddings/embedding_output/prompt"

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
    return _embed(backbone, backbone.token_embedding(token_ids), segment_ids, training)


def _embed(backbone, tokens, segment_ids, training):
    """Embedding output from word vectors `tokens` (positions counted from 0)."""
    positions = backbone.position_embedding(tokens)
    segments = backbone.segment_embedding(segment_ids)
    x = backbone.embeddings_add((tokens, positions, segments))
    x = backbone.embeddings_layer_norm(x)
    return backbone.embeddings_dropout(x, training=training)


def _placement(units):
    placements = {u.placement for u in units}
    if len(placements) > 1:
        raise ValueError(
            f"Active prompt adapters place their tokens differently ({sorted(placements)}); "
            "activate prompts of one placement at a time."
        )
    return placements.pop()


def embed_with_prompts(backbone, inputs, units, training=False):
    """The first encoder layer's input and padding mask with the prompt
    `units`' virtual tokens (all of one placement)."""
    mask = inputs["padding_mask"]
    if _placement(units) == "after_cls":
        x = embedding_output(backbone, inputs["token_ids"], inputs["segment_ids"], training=training)
        for unit in units:
            x, mask = unit.insert(x, mask)
        return x, mask
    x = backbone.token_embedding(inputs["token_ids"])
    for unit in units:
        x, mask = unit.insert(x, mask)
    segment_ids = inputs["segment_ids"]
    count = sum(u.num_virtual_tokens for u in units)
    segment_ids = ops.concatenate([ops.zeros((ops.shape(segment_ids)[0], count), segment_ids.dtype), segment_ids], axis=1)
    return _embed(backbone, x, segment_ids, training), mask


def strip_prompts(sequence, units):
    """The encoder's output at the real tokens only."""
    count = sum(u.num_virtual_tokens for u in units)
    if _placement(units) == "after_cls":
        return remove_virtual_tokens(sequence, count)
    return sequence[:, count:]


@keras.saving.register_keras_serializable(package="keras_adapters")
class PromptEmbedding(InputEndUnit):
    """Trainable virtual tokens for the embedding output.

    Args:
        base: unused (`None`): the unit sits at the backbone's input.
        num_virtual_tokens: how many vectors.
        initial: `None` (random normal, stddev 0.02, BERT's initialiser)
            or an array `[num_virtual_tokens, hidden]` the vectors start as.
        placement: `"after_cls"` (vectors of the embedding output, after
            `[CLS]`) or `"before_cls"` (word vectors before `[CLS]`, peft's);
            see the module docstring.

    Example:
    ```python
    prompt = PromptEmbedding(None, 4)
    prompt.build((None, None, 384))
    x, mask = prompt.insert(embedded, padding_mask)
    ```
    """

    def __init__(self, base, num_virtual_tokens, initial=None, placement="after_cls", **kwargs):
        super().__init__(base, **kwargs)
        check_choice("PromptEmbedding", "placement", placement, PROMPT_PLACEMENTS)
        self.num_virtual_tokens = num_virtual_tokens
        self.initial = initial
        self.placement = placement

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
        """`x` ([batch, length, hidden]) with the prompt after position 0
        (`"after_cls"`) or in front (`"before_cls"`), and the padding mask
        with the prompt's positions on."""
        batch = ops.shape(x)[0]
        prompt = ops.broadcast_to(
            ops.expand_dims(ops.cast(self.prompt, x.dtype), 0), (batch, self.num_virtual_tokens, ops.shape(x)[-1])
        )
        on = ops.ones((batch, self.num_virtual_tokens), padding_mask.dtype)
        if self.placement == "before_cls":
            return ops.concatenate([prompt, x], axis=1), ops.concatenate([on, padding_mask], axis=1)
        x = ops.concatenate([x[:, :1], prompt, x[:, 1:]], axis=1)
        return x, ops.concatenate([padding_mask[:, :1], on, padding_mask[:, 1:]], axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(num_virtual_tokens=self.num_virtual_tokens, placement=self.placement)
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
        num_virtual_tokens: how many vectors are inserted (after `[CLS]`, or
            before it with `placement="before_cls"`).
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
        placement: `"after_cls"` or `"before_cls"`, peft's `PROMPT_TUNING`
            placement (see `keras_adapters.methods.prompt`); with
            `"before_cls"` the vectors start as the word embeddings of their
            tokens, as peft's do. `None` (default): the backbone family's
            first choice, `"after_cls"` on BERT-style encoders and
            `"before_cls"` (in front of the text) on decoders, their only one.

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
    placement: str | None = None

    def validate(self):
        super().validate()
        check_positive_int("PromptConfig", "num_virtual_tokens", self.num_virtual_tokens)
        check_choice("PromptConfig", "init", self.init, PROMPT_INITS)
        if self.placement is not None:
            check_choice("PromptConfig", "placement", self.placement, PROMPT_PLACEMENTS)
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
        """`base` is the backbone. With `"after_cls"` each vector starts as the
        embedding output of one of `init_token_ids`, as if that token came
        right after `[CLS]` (position 1, segment 0; the virtual tokens have no
        position of their own); with `"before_cls"` as its word embedding
        (positions and segments are added when the model runs)."""
        initial = None
        if self.init_token_ids is not None and self.placement == "before_cls":
            # As peft starts them: the words' vectors as the first layer gets them (Gemma scales them).
            initial = ops.convert_to_numpy(family_of(base).embed(base, np.asarray(self.init_token_ids, "int32")))
        elif self.init_token_ids is not None:
            ids = np.stack([np.zeros(self.num_virtual_tokens, "int32"), np.asarray(self.init_token_ids, "int32")], 1)
            initial = ops.convert_to_numpy(embedding_output(base, ids, np.zeros_like(ids))[:, 1])
        return PromptEmbedding(
            None, self.num_virtual_tokens, initial=initial, placement=self.placement, dtype=dtype, name="prompt"
        )
