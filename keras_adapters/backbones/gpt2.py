"""GPT-2-family decoders (GPT-2, DistilGPT2) from Hugging Face folders.

keras-hub's `GPT2Backbone` computes these models (its Hugging Face loader
reads the checkpoint); its layers are keras-hub's generic pre-norm
`TransformerDecoder`, with biases everywhere (so BitFit has something to
train) and learned absolute position embeddings added to the word vectors.

Absolute positions are what set this family apart in decoding: a row padded
on the left must still number its tokens from 0, so the family adds each
column's position embedding itself (`add_positions`), row by row, where
rotary families (Llama) let attention place the tokens. Prompt tuning's
virtual tokens take positions 0... (peft's `inputs_embeds`), and with a
prefix in the cache the tokens start at position `prefix_length`, as
Hugging Face's GPT-2 numbers tokens after `past_key_values`.

Hugging Face's GPT-2 projects queries, keys and values with one fused module
(`attn.c_attn`, 3 x hidden outputs); keras-hub splits it into three, our
`query`, `key` and `value` sites, so a peft tensor of `c_attn` is split by
rows across them (`HUGGINGFACE_SITES`).
"""

from keras import ops

from keras_adapters.backbones.byte_pair import fix_special_token_stand_ins
from keras_adapters.backbones.decoder import cached_forward
from keras_adapters.backbones.family import TRANSFORMER_LAYER_SITES
from keras_adapters.backbones.family import Family
from keras_adapters.backbones.family import register_family

#: Site name -> attribute path from a keras-hub `TransformerDecoder` (see `backbones.family`).
SITES = dict(TRANSFORMER_LAYER_SITES)
#: Hugging Face `GPT2Block` module -> site; a tuple for a fused module whose
#: output rows are those sites' outputs one after another (`c_attn`: q, k, v).
HUGGINGFACE_SITES = {
    "attn.c_attn": ("query", "key", "value"),
    "attn.c_proj": "attention_output",
    "mlp.c_fc": "feedforward_intermediate_dense",
    "mlp.c_proj": "feedforward_output_dense",
}


def _layer_types():
    from keras_hub.layers import TransformerDecoder

    return (TransformerDecoder,)


def language_model(backbone):
    """keras-hub's `GPT2CausalLM` over `backbone` (no preprocessor).

    Raises:
        ValueError: `backbone` has generic decoder layers but is not a
            `GPT2Backbone` (no position embeddings to generate with).
    """
    from keras_hub.src.models.gpt2.gpt2_backbone import GPT2Backbone
    from keras_hub.src.models.gpt2.gpt2_causal_lm import GPT2CausalLM

    if not isinstance(backbone, GPT2Backbone):
        raise ValueError(
            f"{type(backbone).__name__} has keras-hub TransformerDecoder layers but is not a GPT2Backbone; "
            "AdapterCausalLM generates with GPT-2 backbones of that kind (and Llama-family ones)."
        )
    return GPT2CausalLM(backbone, preprocessor=None)


def cache_shape(backbone):
    """(layers, heads, head_dim) of the decoder's KV cache."""
    return int(backbone.num_layers), int(backbone.num_heads), int(backbone.hidden_dim) // int(backbone.num_heads)


def max_positions(backbone):
    return int(backbone.max_sequence_length)


def add_positions(language_model, x, positions):
    """`x` with the position embedding of each row's `positions` added (and
    the backbone's embedding dropout), as `GPT2Backbone` does for 0, 1, ...
    Positions below 0 (a left-padded row's padding, masked as keys) read position 0."""
    backbone = language_model.backbone
    table = ops.cast(backbone.position_embedding.position_embeddings, x.dtype)
    at = ops.take(table, ops.maximum(ops.cast(positions, "int32"), 0), axis=0)
    return backbone.embeddings_dropout(backbone.embeddings_add((x, at)))


def tokenizer(folder):
    """keras-hub's `GPT2Tokenizer` (byte-level BPE, `vocab.json` and `merges.txt`) for the checkpoint in `folder`."""
    from keras_hub.src.models.gpt2.gpt2_tokenizer import GPT2Tokenizer
    from keras_hub.src.utils.preset_utils import get_preset_loader

    fix_special_token_stand_ins()
    return get_preset_loader(folder).load_tokenizer(GPT2Tokenizer)


FAMILY = register_family(
    Family("gpt2", _layer_types, SITES, input_end=True,
           input_layers=("token_embedding", "position_embedding", "embeddings_add", "transformer_layers"),
           prompt_placements=("before_cls",), huggingface_layers=r"(?:transformer\.)?h",
           huggingface_layer_name="transformer.h", huggingface_fan_in_fan_out=True, huggingface_sites=HUGGINGFACE_SITES,
           language_model=language_model,
           cached_forward=cached_forward, cache_shape=cache_shape, add_positions=add_positions,
           max_positions=max_positions, model_types=("gpt2",), tokenizer=tokenizer)
)
