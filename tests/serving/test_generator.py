"""The generating SavedModel, run as TF Serving would (a fresh process with
tensorflow and tensorflow_text only): greedy text equal to the Keras model's,
routed rows equal to each adapter alone, sampling settings as inputs, the
chat template around each prompt, unknown adapters and requests longer than
the export's sequence length refused by name."""

import numpy as np
import pytest

from keras_adapters.core import injection
from keras_adapters.models.causal_lm import AdapterCausalLM
from keras_adapters.serving.generator import chat_halves
from keras_adapters.serving.generator import export_generator

from conftest import serve_many
from tiny_llama import tiny_llama_folder

PROMPTS = ["ab c", "a1", "cab 12", "b"]
NEW = 8


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """Two LoRA adapters that decode differently (small embeddings: the layers pick the tokens)."""
    folder = tiny_llama_folder(tmp_path_factory.mktemp("tiny_llama"), embedding_scale=0.05)
    model = AdapterCausalLM.from_preset(folder, method=None)
    for seed, name in enumerate(["a0", "a1"]):
        model.add_adapter(name, {"method": "lora", "rank": 4})
        rng = np.random.default_rng(seed)
        for w in injection.adapter_weights_by_key(model.backbone, name).values():
            w.assign(rng.normal(0, 0.1 + 0.2 * seed, w.shape).astype("float32"))
    return model


def _request(prompts, temperature=0.0, top_k=0, top_p=1.0, adapter=None, new=NEW):
    inputs = {"prompt": prompts, "max_new_tokens": new, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    dtypes = {"max_new_tokens": "int32", "temperature": "float32", "top_k": "int32", "top_p": "float32"}
    if adapter is not None:
        inputs["adapter"] = adapter
    return {"signature": "generate", "inputs": inputs, "dtypes": dtypes}


def _alone(model, name, prompts, chat=False):
    model.set_active_adapters(name)
    return model.generate(prompts, max_new_tokens=NEW, chat=chat)


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_served_greedy_text_routed_rows_and_sampling(model, tmp_path):
    model.set_active_adapters("a1")
    # The KV cache's length: the longest prompt and NEW tokens fit exactly, one more is refused.
    longest = max(len(model._prompt_ids(p)) for p in PROMPTS)
    single = export_generator(model, tmp_path / "single", sequence_length=longest + NEW)
    routed = export_generator(model, tmp_path / "routed", names=["a0", "a1"])
    assert model.active_adapters == "a1"  # export leaves the model as it was
    expected = {name: _alone(model, name, PROMPTS) for name in ("a0", "a1")}
    assert expected["a0"] != expected["a1"]  # the routing check below can fail
    rows = ["a0", "a1", "a1", "a0"]
    one, too_long = serve_many(single, [_request(PROMPTS), _request(PROMPTS, new=NEW + 1)], tmp_path)
    assert one["outputs"]["text"] == expected["a1"]
    assert f"plus max_new_tokens exceed {longest + NEW}, the most this model was exported for" in too_long["error"]
    mixed, unknown, top1, narrow, zero, wide = serve_many(routed, [
        _request(PROMPTS, adapter=rows),
        _request(PROMPTS[:1], adapter=["a2"]),
        # Sampling settings are request inputs:
        _request(PROMPTS * 2, temperature=1.0, top_k=1, adapter=["a0"] * 8),  # only the likeliest token: greedy
        _request(PROMPTS * 2, temperature=1.0, top_p=1e-6, adapter=["a0"] * 8),  # the first alone reaches top_p
        _request(PROMPTS * 2, temperature=1.0, top_p=0.0, adapter=["a0"] * 8),  # the likeliest is always kept
        _request(PROMPTS * 2, temperature=5.0, adapter=["a0"] * 8),  # flat: 64 draws stray from the greedy path
    ], tmp_path)
    assert mixed["outputs"]["text"] == [expected[name][i] for i, name in enumerate(rows)]
    assert "Unknown adapter name(s): a2. This signature serves: a0, a1." in unknown["error"]
    assert top1["outputs"]["text"] == narrow["outputs"]["text"] == zero["outputs"]["text"] == expected["a0"] * 2
    assert wide["outputs"]["text"] != expected["a0"] * 2


@pytest.mark.slow  # exports and XLA compilations: CI runs it with the slow tests
def test_an_xla_export_serves_what_the_plain_one_serves(model, tmp_path):
    """`xla=True` compiles the decoding loop (per batch, prompt width rounded to 16
    tokens and max_new_tokens): routed greedy rows and the sampling settings as
    without it, and requests of other shapes compile again and still agree."""
    compiled = export_generator(model, tmp_path / "xla", names=["a0", "a1"], xla=True)
    expected = {name: _alone(model, name, PROMPTS) for name in ("a0", "a1")}
    rows = ["a1", "a0", "a1", "a0"]
    mixed, fewer, longer, top1, wide = serve_many(compiled, [
        _request(PROMPTS, adapter=rows),
        _request(PROMPTS[:2], adapter=rows[:2]),  # another batch size
        _request(PROMPTS, adapter=rows, new=NEW + 3),  # another max_new_tokens
        _request(PROMPTS * 2, temperature=1.0, top_k=1, adapter=["a0"] * 8),
        _request(PROMPTS * 2, temperature=5.0, adapter=["a0"] * 8),
    ], tmp_path)
    assert mixed["outputs"]["text"] == [expected[name][i] for i, name in enumerate(rows)]
    assert fewer["outputs"]["text"] == mixed["outputs"]["text"][:2]
    model.set_active_adapters("a1")
    assert longer["outputs"]["text"][0] == model.generate(PROMPTS[0], max_new_tokens=NEW + 3)
    assert top1["outputs"]["text"] == expected["a0"] * 2
    assert wide["outputs"]["text"] != expected["a0"] * 2


@pytest.mark.slow  # a few trainings or exports: CI runs it with the slow tests
def test_chat_prompts_are_written_with_the_template_and_stop_tokens_cut_in_the_graph(model, tmp_path):
    assert chat_halves(model) == ("<|im_start|>", "<|im_end|>")  # the tiny model's template
    _alone(model, "a1", PROMPTS, chat=True)  # greedy decoding, adapter a1
    # A stop token halfway along the first row's greedy path: served rows must end before it too.
    (path,) = model._generated_ids(model.prompt_texts(PROMPTS[:1], chat=True), NEW, None)
    stops = model.stop_token_ids
    model.stop_token_ids, model.chat = (path[NEW // 2],), True
    try:
        expected = _alone(model, "a1", PROMPTS, chat=True)
        saved = export_generator(model, tmp_path / "chat")  # chat as the model's (its adapter trained so)
    finally:
        model.stop_token_ids, model.chat = stops, False
    assert expected[0] == str(model.tokenizer.detokenize(np.array(path[: path.index(path[NEW // 2])], np.int32)))
    (response,) = serve_many(saved, [_request(PROMPTS)], tmp_path)
    assert response["outputs"]["text"] == expected


@pytest.mark.slow  # a few trainings or exports: CI runs it with the slow tests
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_input_end_adapters_are_served_with_their_virtual_tokens_or_prefix(model, tmp_path, method):
    from keras_adapters.methods.prefix import PrefixConfig
    from keras_adapters.methods.prompt import PromptConfig

    config = {"prompt": PromptConfig(num_virtual_tokens=3, init="random"),
              "prefix": PrefixConfig(prefix_length=3, reparameterize=False)}[method]
    model.add_adapter("p", config)
    try:
        for w in injection.adapter_weights_by_key(model.backbone, "p").values():
            w.assign(np.random.default_rng(5).normal(0, 1.0, w.shape).astype("float32"))
        plain = _alone(model, None, PROMPTS)
        expected = _alone(model, "p", PROMPTS)  # and exported: the active adapter
        assert expected != plain  # the virtual tokens change the text
        saved = export_generator(model, tmp_path / "prompt")
    finally:
        model.delete_adapter("p")
    (response,) = serve_many(saved, [_request(PROMPTS)], tmp_path)
    assert response["outputs"]["text"] == expected


@pytest.mark.slow  # exports: CI runs it with the slow tests
def test_a_gpt2_is_served_routed_with_positions_per_row_and_its_position_limit(tmp_path):
    """GPT-2 adds absolute position embeddings itself: served rows padded on the
    left must decode as the Keras model does, and the export's length limit is
    the position table's."""
    from keras_adapters.methods.prompt import PromptConfig
    from tiny_gpt2 import POSITIONS, tiny_gpt2_folder

    model = AdapterCausalLM.from_preset(tiny_gpt2_folder(tmp_path / "gpt2"), method=None)
    for seed, name in enumerate(["a0", "a1"]):
        model.add_adapter(name, {"method": "lora", "rank": 4})
        rng = np.random.default_rng(seed)
        for w in injection.adapter_weights_by_key(model.backbone, name).values():
            w.assign(rng.normal(0, 0.3 + 0.3 * seed, w.shape).astype("float32"))
    model.add_adapter("p", PromptConfig(num_virtual_tokens=3, init="random"))
    for w in injection.adapter_weights_by_key(model.backbone, "p").values():
        w.assign(np.random.default_rng(5).normal(0, 1.0, w.shape).astype("float32"))
    expected = {name: _alone(model, name, PROMPTS) for name in ("a0", "a1", "p")}
    assert len({tuple(texts) for texts in expected.values()}) == 3
    routed = export_generator(model, tmp_path / "routed", names=["a0", "a1"])  # default sequence_length: 4096
    model.set_active_adapters("p")
    prompt = export_generator(model, tmp_path / "prompt")
    rows = ["a1", "a0", "a0", "a1"]
    mixed, too_long = serve_many(routed, [_request(PROMPTS, adapter=rows),
                                          _request(PROMPTS, adapter=rows, new=POSITIONS)], tmp_path)
    assert mixed["outputs"]["text"] == [expected[name][i] for i, name in enumerate(rows)]
    assert f"exceed {POSITIONS}, the most this model was exported for" in too_long["error"]
    (virtual,) = serve_many(prompt, [_request(PROMPTS)], tmp_path)
    assert virtual["outputs"]["text"] == expected["p"]


@pytest.mark.slow  # exports: CI runs it with the slow tests
def test_a_gemma3_is_served_routed_and_with_a_prefix_after_each_row_s_padding(tmp_path):
    """Gemma 3's served graph computes what the Keras model does (itself checked
    against a NumPy Gemma 3 in test_causal_lm_gemma3.py): routed LoRA rows padded
    on the left, and a prefix placed after each row's padding (the window, 4
    tokens, shorter than the rows)."""
    from keras_adapters.methods.prefix import PrefixConfig
    from tiny_gemma3 import tiny_gemma3_folder

    model = AdapterCausalLM.from_preset(tiny_gemma3_folder(tmp_path / "gemma3", embedding_scale=0.05), method=None)
    for seed, name in enumerate(["a0", "a1"]):
        model.add_adapter(name, {"method": "lora", "rank": 4})
        rng = np.random.default_rng(seed)
        for w in injection.adapter_weights_by_key(model.backbone, name).values():
            w.assign(rng.normal(0, 0.3 + 0.3 * seed, w.shape).astype("float32"))
    model.add_adapter("p", PrefixConfig(prefix_length=3, reparameterize=False))
    for w in injection.adapter_weights_by_key(model.backbone, "p").values():
        w.assign(np.random.default_rng(5).normal(0, 0.5, w.shape).astype("float32"))
    prompts = ["ab c abc a1", "a1", "cab 12", "b"]
    expected = {name: _alone(model, name, prompts) for name in ("a0", "a1", "p")}
    assert len({tuple(texts) for texts in expected.values()}) == 3
    routed = export_generator(model, tmp_path / "routed", names=["a0", "a1"], sequence_length=32)
    model.set_active_adapters("p")
    prefix = export_generator(model, tmp_path / "prefix", sequence_length=32)
    rows = ["a1", "a0", "a0", "a1"]
    mixed, = serve_many(routed, [_request(prompts, adapter=rows)], tmp_path)
    assert mixed["outputs"]["text"] == [expected[name][i] for i, name in enumerate(rows)]
    (served,) = serve_many(prefix, [_request(prompts)], tmp_path)
    assert served["outputs"]["text"] == expected["p"]
