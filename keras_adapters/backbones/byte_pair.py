"""keras-hub's byte-level BPE tokenizers with more than ten special tokens.

In the graph (`tf.data`, SavedModel signatures) keras-hub 0.32's
`BytePairTokenizer` hides each special token behind a stand-in while it
splits words: "ĴA", "ĴB", ... by the token's index in
`unsplittable_tokens`, two letters from the eleventh ("ĴBA" for 10). The
stand-ins are put back in index order, so "ĴB" (token 1) is put back inside
"ĴBA" first: token 10 comes out as token 1's text followed by "A" and is
tokenized as ordinary text. keras-hub builds that list from a set, so which
tokens are hit changes with each process's string hashing: SmolLM2 has 17
special tokens, and its chat markers were split into pieces in about two
processes of three (the eager path, Hugging Face's `tokenizers`, was right).

`fix_special_token_stand_ins()` makes every stand-in as wide as the widest
("ĴAB" for 1 when there are 17), so none is the start of another; lists of
ten or fewer tokens get the same stand-ins as before.
"""

from keras_hub.src.tokenizers import byte_pair_tokenizer

_LETTERS = "ABCDEFGHIJ"
#: keras-hub's own stand-ins (what `fix_special_token_stand_ins` replaces).
KERAS_HUB_STAND_INS = byte_pair_tokenizer.create_alts_for_unsplittable_tokens


def special_token_stand_ins(unsplittable_tokens):
    """One stand-in per token: "Ĵ" and its index as letters (0 -> A), all of one width."""
    width = len(str(max(len(unsplittable_tokens) - 1, 0)))
    return ["Ĵ" + "".join(_LETTERS[int(d)] for d in str(i).zfill(width)) for i in range(len(unsplittable_tokens))]


def fix_special_token_stand_ins():
    """Make keras-hub's byte-pair tokenizers use `special_token_stand_ins`
    (idempotent; takes effect for tokenizers traced afterwards)."""
    byte_pair_tokenizer.create_alts_for_unsplittable_tokens = special_token_stand_ins
