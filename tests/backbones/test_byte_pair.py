"""Byte-level BPE tokenizers keep every special token whole in the graph,
however many there are and in whatever order keras-hub lists them."""

import keras_hub
import pytest
import tensorflow as tf
import tokenizers
from keras_hub.src.tokenizers import byte_pair_tokenizer
from tiny_gpt2 import tiny_gpt2_folder
from tiny_llama import tiny_llama_folder

from keras_adapters.backbones import gpt2
from keras_adapters.backbones import llama
from keras_adapters.backbones.byte_pair import KERAS_HUB_STAND_INS
from keras_adapters.backbones.byte_pair import fix_special_token_stand_ins
from keras_adapters.backbones.byte_pair import special_token_stand_ins


@pytest.fixture(autouse=True)
def keras_hub_stand_ins(monkeypatch):
    """keras-hub's own stand-ins at the start of each test (and back after it), so a fix made by
    another test or an earlier load cannot hide a loader that forgets it."""
    monkeypatch.setattr(byte_pair_tokenizer, "create_alts_for_unsplittable_tokens", KERAS_HUB_STAND_INS)

#: 17 special tokens, as SmolLM2 has: the chat markers last, where keras-hub's
#: two-letter stand-ins ("ĴBA" for 10, ...) begin.
SPECIAL = [f"<extra_{i}>" for i in range(15)] + ["<|im_start|>", "<|im_end|>"]
LETTERS = ["a", "b", "c", "s", "u", "e", "r", "Ġ", "Ċ", "A"]
MERGES = ["u s", "us e", "use r", "Ġ a", "a b"]
TEXT = "<|im_start|>user\nab<|im_end|>\n<|im_start|>A b<extra_1>A<extra_12>" + "".join(SPECIAL)


def _vocabulary():
    pieces = [*SPECIAL, *LETTERS, "us", "use", "user", "Ġa", "ab"]
    return {piece: i for i, piece in enumerate(pieces)}


def _reference_ids(text):
    """Hugging Face `tokenizers` on the same vocabulary, merges and special tokens."""
    model = tokenizers.models.BPE(vocab=_vocabulary(), merges=[tuple(m.split()) for m in MERGES])
    reference = tokenizers.Tokenizer(model)
    reference.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.add_special_tokens(SPECIAL)
    return reference.encode(text).ids


@pytest.mark.parametrize("shift", [0, 11])  # the markers past the tenth place, then the other tokens
def test_special_tokens_stay_whole_in_the_graph_in_any_order(shift):
    fix_special_token_stand_ins()
    order = SPECIAL[shift:] + SPECIAL[:shift]  # keras-hub's order comes from a set
    tokenizer = keras_hub.tokenizers.BytePairTokenizer(_vocabulary(), MERGES, unsplittable_tokens=order)
    graph_ids = tf.function(tokenizer)(tf.constant(TEXT)).numpy().tolist()
    expected = _reference_ids(TEXT)
    assert expected.count(_vocabulary()["<|im_start|>"]) == 3  # the reference keeps the markers whole
    assert graph_ids == expected


def test_stand_ins_are_one_width_and_unchanged_for_ten_tokens_or_fewer():
    stand_ins = special_token_stand_ins(SPECIAL)
    assert stand_ins[:2] == ["ĴAA", "ĴAB"] and stand_ins[16] == "ĴBG"
    assert len(set(map(len, stand_ins))) == 1 and len(set(stand_ins)) == len(SPECIAL)
    assert special_token_stand_ins(["<a>", "<b>"]) == ["ĴA", "ĴB"]
    assert special_token_stand_ins([f"<{i}>" for i in range(10)])[9] == "ĴJ"
    assert special_token_stand_ins([f"<{i}>" for i in range(11)])[10] == "ĴBA"
    hundred_and_one = special_token_stand_ins([f"<{i}>" for i in range(101)])
    assert hundred_and_one[1] == "ĴAAB" and hundred_and_one[100] == "ĴBAA"


def test_without_the_fix_keras_hub_splits_the_eleventh_special_token():
    """The bug the fix is for, so this file notices if keras-hub changes its stand-ins."""
    tokenizer = keras_hub.tokenizers.BytePairTokenizer(_vocabulary(), MERGES, unsplittable_tokens=SPECIAL)
    assert tf.function(tokenizer)(tf.constant(TEXT)).numpy().tolist() != _reference_ids(TEXT)


@pytest.mark.parametrize("family, folder", [(llama, tiny_llama_folder), (gpt2, tiny_gpt2_folder)])
def test_the_byte_level_tokenizer_loaders_make_the_fix(tmp_path, family, folder):
    family.tokenizer(folder(tmp_path / "checkpoint"))
    assert byte_pair_tokenizer.create_alts_for_unsplittable_tokens is special_token_stand_ins
