"""The TFLite decoder (`keras_adapters.serving.decoder_tflite`): its `start`
and `step` signatures, run by TensorFlow's TFLite interpreter as an app's
loop would, give the Keras model's next-token logits and greedy tokens, for
the three decoder families and the adapters that change the cache (a prefix) or
the positions (virtual tokens); the command line writes it with the files
an app needs."""

import json

import numpy as np
import pytest

from keras_adapters.core import injection
from keras_adapters.models.causal_lm import AdapterCausalLM
from keras_adapters.serving import decoder_tflite

from conftest import cli_process
from tiny_gemma3 import tiny_gemma3_folder
from tiny_gpt2 import tiny_gpt2_folder
from tiny_llama import tiny_llama_folder

PROMPTS = ["ab c", "a1", "cab 12 b"]
METHODS = {"lora": {"method": "lora", "rank": 2, "target_modules": ["query", "value", "feedforward_output_dense"]},
           "prompt": {"method": "prompt", "num_virtual_tokens": 3, "init": "random"},
           "prefix": {"method": "prefix", "prefix_length": 3, "reparameterize": False}}


def _model(tmp_path, family, method):
    # Small word vectors: the layers, not each token's own embedding, choose the next token.
    folders = {"llama": tiny_llama_folder, "gpt2": tiny_gpt2_folder, "gemma3": tiny_gemma3_folder}
    folder = folders[family](tmp_path / family, embedding_scale=0.05)
    model = AdapterCausalLM.from_preset(folder, method=METHODS[method])
    rng, scale = np.random.default_rng(0), 0.1 if method == "prefix" else 0.5  # strong prefixes pick one token
    for w in injection.adapter_weights_by_key(model.backbone, "default").values():
        w.assign(rng.normal(0, scale, w.shape).astype("float32"))
    return model


def _check(model, path, steps=6):
    import tensorflow as tf

    # TensorFlow's own interpreter: older kernels than LiteRT's (no 6-D slices), what many apps still ship.
    start, step = decoder_tflite.runners(path, tf.lite.Interpreter)
    texts = []
    for prompt in PROMPTS:
        ids = model._prompt_ids(prompt)
        state = start()
        out = step(token_ids=np.array([ids], np.int32), index=state["index"], cache=state["cache"])
        expected = np.asarray(model({"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)), bool)}))
        np.testing.assert_allclose(out["logits"][0], expected[0, -1], atol=1e-4 * np.abs(expected).max())
        # One more step: the logits the model gives the prompt and that token.
        token = int(np.argmax(out["logits"][0]))
        out = step(token_ids=np.array([[token]], np.int32), index=out["index"], cache=out["cache"])
        longer = np.array([ids + [token]])
        expected = np.asarray(model({"token_ids": longer, "padding_mask": np.ones_like(longer, bool)}))
        np.testing.assert_allclose(out["logits"][0], expected[0, -1], atol=1e-4 * np.abs(expected).max())
        got = decoder_tflite.greedy(path, ids, steps, interpreter=tf.lite.Interpreter)
        assert got == model._generated_ids([prompt], steps, None)[0]
        texts.append(tuple(got))
    assert len({token for row in texts for token in row}) > 1  # not one token everywhere: rows can differ


@pytest.mark.parametrize("family, method", [
    ("llama", "prefix"),  # rotary positions, keys at the cache's front
    ("gpt2", "prompt"),  # absolute positions, virtual tokens first
    ("gemma3", "prompt"),  # scaled token vectors beside unscaled virtual ones, sliding windows
    pytest.param("gemma3", "prefix", marks=pytest.mark.slow),
    pytest.param("llama", "lora", marks=pytest.mark.slow),
    pytest.param("llama", "prompt", marks=pytest.mark.slow),
    pytest.param("gpt2", "lora", marks=pytest.mark.slow),
    pytest.param("gpt2", "prefix", marks=pytest.mark.slow),
])
def test_prefill_and_decode_steps_give_the_keras_model_s_logits_and_tokens(tmp_path, family, method):
    model = _model(tmp_path, family, method)
    model.chat = family == "llama"  # the tiny Llama has a chat template
    path = decoder_tflite.export_decoder_tflite(model, tmp_path / "tflite", sequence_length=24)
    settings = json.loads((tmp_path / "tflite" / "generation.json").read_text())
    assert settings["chat"] == model.chat
    if model.chat:  # what the app puts around a prompt is what generate writes
        assert settings["chat_prefix"] + "ab" + settings["chat_suffix"] == model.prompt_texts(["ab"])[0]
    virtual = 3 if method in ("prompt", "prefix") else 0
    assert (settings["sequence_length"], settings["cache_columns"], settings["first_prompt_column"]) == (24, 24 + virtual,
                                                                                                       virtual)
    _check(model, path)


def test_a_prompt_too_long_for_the_export_and_a_composition_are_refused(tmp_path):
    model = _model(tmp_path, "gpt2", "lora")
    with pytest.raises(ValueError, match="needs 41 positions; this backbone has 40: pass a sequence_length of 40 or less"):
        decoder_tflite.export_decoder_tflite(model, tmp_path / "x", sequence_length=41)
    model.add_adapter("p", METHODS["prompt"])
    model.set_active_adapters("p")
    with pytest.raises(ValueError, match="needs 43 positions; this backbone has 40"):  # 3 virtual tokens
        decoder_tflite.export_decoder_tflite(model, tmp_path / "x", sequence_length=40)
    import keras_adapters as ka

    model.set_active_adapters(ka.Stack("default", "p"))
    with pytest.raises(ValueError, match="serves one adapter"):
        decoder_tflite.export_decoder_tflite(model, tmp_path / "x", sequence_length=8)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # a training and an export: CI runs it with the slow tests
def test_the_command_line_writes_a_decoder_an_app_can_run(tmp_path):
    folder = tiny_gpt2_folder(tmp_path / "gpt2")
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": "cab"}) for p in PROMPTS) + "\n")
    trained = cli_process("train", str(data), "--task", "causal-lm", "--preset", folder, "--output",
                          str(tmp_path / "run"), "--epochs", "1", "--sequence-length", "16")
    assert trained.returncode == 0, trained.stderr
    out = cli_process("export", str(tmp_path / "run"), "--format", "tflite", "--output", str(tmp_path / "app"),
                      "--sequence-length", "20")
    assert out.returncode == 0 and "signatures start and step" in out.stdout, out.stderr
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == ["generation.json", "merges.txt", "model.tflite",
                                                                    "vocab.json"]
    from keras_adapters.runs import generation

    model = generation.load_causal_lm_run(tmp_path / "run")
    ids = model._prompt_ids("ab c")
    assert decoder_tflite.greedy(tmp_path / "app" / "model.tflite", ids, 5) == model._generated_ids(["ab c"], 5, None)[0]
