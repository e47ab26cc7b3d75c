"""GGUF checkpoints become Hugging Face Llama folders keras-hub loads: tensors
dequantized and un-permuted exactly, tokenizer and config carried over, and on
the real SmolLM2 file the same next-token logits as transformers' own GGUF
loading (the torch-parity extra; skipped without it)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from keras_adapters import cli  # noqa: E402
from keras_adapters.io import gguf_checkpoint  # noqa: E402
from keras_adapters.io import presets  # noqa: E402
from tiny_llama import FFN, HEADS, HIDDEN, KV_HEADS, LAYERS, TOKENS, _hf_weights, write_tiny_gguf  # noqa: E402,F401



def test_tensors_come_back_unpermuted_and_the_config_is_read(tmp_path):
    from safetensors.numpy import load_file

    expected = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = gguf_checkpoint.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    got = load_file(str(Path(folder) / "model.safetensors"))
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    config = json.loads((Path(folder) / "config.json").read_text())
    assert {k: config[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                                   "num_key_value_heads", "vocab_size", "tie_word_embeddings")} == {
        "num_hidden_layers": LAYERS, "hidden_size": HIDDEN, "intermediate_size": FFN, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "vocab_size": len(TOKENS), "tie_word_embeddings": True}
    assert config["rms_norm_eps"] == pytest.approx(1e-5)


def test_quantized_tensors_are_dequantized_within_their_step(tmp_path):
    from safetensors.numpy import load_file

    expected = write_tiny_gguf(tmp_path / "q.gguf", quantize_embeddings=True)
    folder = gguf_checkpoint.convert_gguf(tmp_path / "q.gguf", tmp_path / "hf")
    got = load_file(str(Path(folder) / "model.safetensors"))["model.embed_tokens.weight"]
    original = expected["model.embed_tokens.weight"]
    step = np.abs(original).reshape(len(TOKENS), -1).max(axis=1, keepdims=True) / 127  # Q8_0: one scale per 32 values
    assert got.shape == original.shape and got.dtype == np.float32
    assert np.all(np.abs(got - original) <= step / 2 + 1e-6)
    assert np.abs(got - original).max() > 0  # it was quantized


def test_the_folder_loads_in_keras_hub_with_its_tokenizer_and_epsilon(tmp_path):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = gguf_checkpoint.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    backbone = presets.load_backbone(folder)
    assert type(backbone).__name__ == "Llama3Backbone"
    assert backbone.layer_norm_epsilon == pytest.approx(1e-5)  # keras-hub's own loader would leave 1e-6
    np.testing.assert_array_equal(backbone.token_embedding.embeddings.numpy(), _hf_weights()["model.embed_tokens.weight"])
    from keras_adapters.backbones import llama

    tokenizer = llama.tokenizer(folder)
    # "a b" is merged before "Ġ a" (merge order), so " ab" is "Ġ" + "ab"
    assert np.asarray(tokenizer("abc ab")).tolist() == [TOKENS.index("abc"), TOKENS.index("Ġ"), TOKENS.index("ab")]
    from transformers import PreTrainedTokenizerFast  # Hugging Face's reading of the same tokenizer.json

    reference = PreTrainedTokenizerFast(tokenizer_file=str(Path(folder) / "tokenizer.json"))
    for text in ["abc ab", "cab 1 ba", "a1b2"]:
        assert np.asarray(tokenizer(text)).tolist() == reference(text)["input_ids"], text
    # tokenizer.json keeps SmolLM2's digit splitting (keras-hub's BPE does not read pre-tokenizers;
    # SmolLM2's vocabulary has no multi-digit token, so the two agree on it: see the SmolLM2 test).
    assert reference("12")["input_ids"] == [TOKENS.index("1"), TOKENS.index("2")]
    added = json.loads((Path(folder) / "tokenizer.json").read_text())["added_tokens"]
    assert [(t["content"], t["special"]) for t in added] == [(t, True) for t in TOKENS[:3]] + [("<tool>", False)]
    settings = json.loads((Path(folder) / "tokenizer_config.json").read_text())
    assert (settings["bos_token"], settings["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert settings["chat_template"].startswith("{% for m in messages %}")


@pytest.mark.parametrize("embedding_scale", [1.0, 0.003])  # small inputs: the RMS norm's epsilon matters
def test_the_backbone_computes_what_a_float64_llama_computes(tmp_path, embedding_scale):
    from llama_reference import NumpyLlama

    write_tiny_gguf(tmp_path / "tiny.gguf", embedding_scale=embedding_scale)
    folder = gguf_checkpoint.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    backbone = presets.load_backbone(folder)
    ids = np.array([[3, 9, 6, 11, 4, 7, 8], [5, 5, 10, 3, 6, 9, 4]])
    hidden = backbone({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    logits = backbone.token_embedding(hidden, reverse=True).numpy()
    expected = NumpyLlama(folder)(ids)
    np.testing.assert_allclose(logits, expected, atol=1e-4 * np.abs(expected).max())


def test_a_gguf_preset_is_converted_once_and_again_when_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_ADAPTERS_CACHE", str(tmp_path / "cache"))
    write_tiny_gguf(tmp_path / "tiny.gguf")
    first = presets.resolve_preset(str(tmp_path / "tiny.gguf"))
    stamp = os.path.getmtime(Path(first) / "model.safetensors")
    assert presets.resolve_preset(str(tmp_path / "tiny.gguf")) == first
    assert os.path.getmtime(Path(first) / "model.safetensors") == stamp  # not converted again
    write_tiny_gguf(tmp_path / "tiny.gguf", seed=1)  # another file under the same name
    second = presets.resolve_preset(str(tmp_path / "tiny.gguf"))
    assert second != first
    source = json.loads((Path(second) / gguf_checkpoint.SOURCE_FILE).read_text())
    assert source["sha256"] == gguf_checkpoint.sha256(tmp_path / "tiny.gguf")


def test_convert_writes_the_folder_from_the_command_line(tmp_path, capsys):
    write_tiny_gguf(tmp_path / "tiny.gguf")
    assert cli.main(["convert", str(tmp_path / "tiny.gguf"), "-o", str(tmp_path / "hf")]) == 0
    assert f"llama model, 2 layers, hidden size 32, vocabulary {len(TOKENS)} written to" in capsys.readouterr().out
    assert (tmp_path / "hf" / "model.safetensors").is_file()


def _omitting(*calls):
    def edit(writer):
        pass

    edit.omit = calls
    return edit


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: write_tiny_gguf(p, arch="gpt2"), "GGUF architecture 'gpt2': only Llama-family"),
        (lambda p: p.write_bytes(b"GGUF" + b"\0" * 40), "is not a readable GGUF file"),
        (lambda p: write_tiny_gguf(p, edit=_omitting("add_block_count")), "no 'llama.block_count' field"),
        (lambda p: write_tiny_gguf(p, edit=lambda w: w.add_rope_dimension_count(4)), "heads are 4 wide, not .* 8"),
        (lambda p: write_tiny_gguf(p, edit=lambda w: w.add_tensor("rope_freqs.weight", np.ones(4, np.float32))),
         "rope frequencies"),
    ],
)
def test_what_cannot_convert_is_refused_and_nothing_is_written(tmp_path, make, message):
    make(tmp_path / "bad.gguf")
    with pytest.raises(gguf_checkpoint.GGUFError, match=message):
        gguf_checkpoint.convert_gguf(tmp_path / "bad.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_smollm2_computes_what_transformers_loads_from_the_same_gguf(smollm2_gguf, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    texts = ["The capital of France is", "In 2024, 17 of the 365 days were rainy; 3.14 is pi."]
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    folder = gguf_checkpoint.convert_gguf(smollm2_gguf, tmp_path / "hf")
    backbone = presets.load_backbone(folder)
    from keras_adapters.backbones import llama

    ours = llama.tokenizer(folder)
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert np.asarray(ours(text)).tolist() == ids  # digits split one by one, as SmolLM2's tokenizer does
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0, -1].numpy()
        hidden = backbone({"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)), "int32")})
        logits = backbone.token_embedding(hidden, reverse=True)[0, -1].numpy()
        np.testing.assert_allclose(logits, expected, atol=1e-4)


# ------------------------------------------------------------------ Gemma 3
def test_a_gemma3_file_becomes_a_gemma3_text_folder_with_its_norms_less_one(tmp_path):
    from safetensors.numpy import load_file

    import tiny_gemma3

    expected = tiny_gemma3.write_tiny_gguf(tmp_path / "g.gguf", chat_template="{{ messages }}")
    folder = Path(gguf_checkpoint.convert_gguf(tmp_path / "g.gguf", tmp_path / "hf"))
    got = load_file(str(folder / "model.safetensors"))
    assert sorted(got) == sorted(expected)
    for key in expected:  # the file holds norms plus one
        np.testing.assert_allclose(got[key], expected[key], atol=1e-7, err_msg=key)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config["head_dim"] == tiny_gemma3.HEAD_DIM
    assert config["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert (config["sliding_window"], config["query_pre_attn_scalar"]) == (tiny_gemma3.WINDOW, tiny_gemma3.HEAD_DIM)
    # A chat model also stops at <end_of_turn>.
    stops = json.loads((folder / "generation_config.json").read_text())["eos_token_id"]
    assert stops == [tiny_gemma3.TOKENS.index("<eos>"), tiny_gemma3.TOKENS.index("<end_of_turn>")]


def test_the_gemma3_tokenizer_is_rebuilt_as_sentencepiece_reads_it(tmp_path):
    import sentencepiece

    import tiny_gemma3
    from keras_adapters.backbones import gemma3

    tiny_gemma3.write_tiny_gguf(tmp_path / "g.gguf")
    folder = gguf_checkpoint.convert_gguf(tmp_path / "g.gguf", tmp_path / "hf")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(Path(folder) / "tokenizer.model"))
    ours = gemma3.tokenizer(folder)
    tokens = tiny_gemma3.TOKENS
    # BPE by score ("abc", then " ab"), a run of two spaces as its own piece (llama.cpp stores it as
    # spaces), a chat marker written in text as its id, a character without a piece as its UTF-8 bytes.
    text = "abc ab  c<start_of_turn>\né"
    expected = ["abc", "▁ab", "  ", "c", "<start_of_turn>", "\n", "<0xC3>", "<0xA9>"]
    assert [tokens[i] for i in np.asarray(ours(text)).tolist()] == expected
    assert processor.encode(text) == np.asarray(ours(text)).tolist()
    assert processor.decode(processor.encode(text)) == text
    assert (processor.unk_id(), processor.bos_id(), processor.eos_id()) == (3, 2, 1)


@pytest.mark.parametrize("edit, message", [
    (lambda w: w.add_tensor("v.patch_embd.weight", np.ones(4, np.float32)), "vision tower"),
    (lambda w: w.add_string("gemma3.rope.scaling.type", "linear"), "rope scaling \\(linear"),
    (lambda w: w.add_tensor("blk.0.attn_sinks.weight", np.ones(4, np.float32)), "no place in a Gemma 3 model"),
    (34, "it has 34 layers: Gemma 3 4B and larger"),
])
def test_what_a_gemma3_file_cannot_convert_is_refused(tmp_path, edit, message):
    import tiny_gemma3

    if isinstance(edit, int):  # a block count: what the file says of the model's size
        tiny_gemma3.write_tiny_gguf(tmp_path / "bad.gguf", block_count=edit)
    else:
        tiny_gemma3.write_tiny_gguf(tmp_path / "bad.gguf", edit=edit)
    with pytest.raises(gguf_checkpoint.GGUFError, match=message):
        gguf_checkpoint.convert_gguf(tmp_path / "bad.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow  # converts 270M parameters (about 30 s) and runs transformers beside it
def test_gemma3_computes_what_transformers_loads_from_the_same_gguf(gemma3_gguf, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        str(gemma3_gguf.parent), gguf_file=gemma3_gguf.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gemma3_gguf.parent), gguf_file=gemma3_gguf.name)
    folder = gguf_checkpoint.convert_gguf(gemma3_gguf, tmp_path / "hf")
    from keras_adapters.models.causal_lm import AdapterCausalLM

    model = AdapterCausalLM.from_preset(folder, method=None)
    texts = ["The capital of France is", "Hello world!  Numbers 12345 and émigré café.\nNew line\ttab",
             "<start_of_turn>user\nBonjour, ça va ?<end_of_turn>\n", "def f(x):\n    return x ** 2  # 日本語 😀"]
    for text in texts:
        ids = tokenizer(text)["input_ids"]  # <bos> first
        assert [model.start_token_id] + np.asarray(model.tokenizer(text)).tolist() == ids, text
        with torch.no_grad():
            expected = reference(torch.tensor([ids])).logits[0, -1].numpy()
        logits = np.asarray(model({"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)), bool)}))
        np.testing.assert_allclose(logits[0, -1], expected, atol=1e-4 * np.abs(expected).max())
    ids = tokenizer(texts[0], return_tensors="pt")
    greedy = reference.generate(**ids, max_new_tokens=16, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert model.generate(texts[0], max_new_tokens=16) == tokenizer.decode(greedy)
