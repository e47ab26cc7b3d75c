"""Adapters on a Gemma 3 decoder (`AdapterCausalLM`, the Gemma 3 family),
checked against a float64 NumPy Gemma 3 (`gemma3_reference`) whose weights
carry the same updates: the tiny checkpoint as llama.cpp writes it (norms
plus one, rows longer than its 4-token window), LoRA/DoRA/IA3 on Gemma's
`[heads, hidden, head_dim]` kernels (and their merges), bottleneck adapters
after the post-norms, prompt tuning with unscaled virtual tokens, prefix
tuning, cached generation of left-padded batches against greedy decoding by
full forwards, and a peft LoRA folder of Gemma 3."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from keras_adapters.core import injection
from keras_adapters.methods.ia3 import IA3Config
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.prefix import PrefixConfig
from keras_adapters.methods.prompt import PromptConfig
from keras_adapters.models.causal_lm import AdapterCausalLM

from decoder_checks import LEFT_PADDING_METHODS
from decoder_checks import assert_adapted_logits
from decoder_checks import assert_left_padded_decoding
from decoder_checks import layer_site
from decoder_checks import left_padding_config
from decoder_checks import logits
from decoder_checks import prefix_past
from decoder_checks import randomize
from gemma3_reference import NumpyGemma3
from tiny_gemma3 import CHAT_TEMPLATE, LAYERS, PIECES, TOKENS, tiny_gemma3_folder

ALL_LINEAR = ("query", "key", "value", "attention_output", "feedforward_gate_dense",
              "feedforward_intermediate_dense", "feedforward_output_dense")
HF_MODULES = {"query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
              "attention_output": "self_attn.o_proj", "feedforward_gate_dense": "mlp.gate_proj",
              "feedforward_intermediate_dense": "mlp.up_proj", "feedforward_output_dense": "mlp.down_proj"}
FIRST = TOKENS.index(PIECES[0])
#: Rows of 11 tokens: longer than the 4-token window of the sliding-window layers.
IDS = np.random.default_rng(0).integers(FIRST, len(TOKENS), (2, 11))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_gemma3_folder(tmp_path_factory.mktemp("tiny_gemma3"))


def _logits(model, ids=None):
    return logits(model, IDS if ids is None else ids)


def _model(folder, method):
    return AdapterCausalLM.from_preset(folder, method=method, sequence_length=24)


def _with_lora(folder, model, name="default"):
    """The NumPy Gemma 3 with each LoRA unit's `scaling * (A B)^T` added to its weight `[out, in]`."""
    reference = NumpyGemma3(folder)
    for key, unit in injection.units_of(model.backbone, name).items():
        i, site = layer_site(key)
        delta = unit.lora_a.numpy().astype(np.float64) @ unit.lora_b.numpy().astype(np.float64) * unit.scaling
        reference.w[f"layers.{i}.{HF_MODULES[site]}.weight"] += delta.T  # output features heads-major, as HF's rows
    return reference


def test_the_backbone_computes_the_checkpoint_and_the_fixture_can_tell_bugs_apart(folder):
    model = _model(folder, None)
    reference = NumpyGemma3(folder)
    expected = reference(IDS)
    np.testing.assert_allclose(_logits(model), expected, atol=1e-5 * np.abs(expected).max())
    assert model.start_token_id == TOKENS.index("<bos>") and model.stop_token_ids == (TOKENS.index("<eos>"),)
    # Each of these would be a bug the comparison above catches: no window, a norm off by one, no scaling.
    windowless = NumpyGemma3(folder)
    windowless.config = dict(windowless.config, sliding_window=100)
    off_by_one = NumpyGemma3(folder)
    off_by_one.w["layers.0.post_attention_layernorm.weight"] += 1.0
    unscaled = NumpyGemma3(folder)
    unscaled.config = dict(unscaled.config, hidden_size=1)
    for wrong in (windowless, off_by_one, unscaled):
        assert np.abs(wrong(IDS) - expected).max() > 1e-2 * np.abs(expected).max()


def test_lora_on_every_projection_computes_gemma_with_updated_weights(folder):
    model = _model(folder, LoRAConfig(rank=2, alpha=3.0, target_modules=ALL_LINEAR))
    randomize(model, "default")
    assert len(injection.units_of(model.backbone, "default")) == LAYERS * len(ALL_LINEAR)
    expected = _with_lora(folder, model)(IDS)
    assert_adapted_logits(_logits(model), expected, NumpyGemma3(folder)(IDS))


@pytest.mark.parametrize("method", [LoRAConfig(rank=2, target_modules=ALL_LINEAR),
                                    LoRAConfig(rank=2, use_dora=True, target_modules=ALL_LINEAR), IA3Config()],
                         ids=["lora", "dora", "ia3"])
def test_merging_into_gemma_s_head_major_kernels_changes_nothing(folder, method):
    """Gemma's query/key/value kernels keep the heads first (`[heads, hidden, head_dim]`):
    a merge must lay its update out the same way."""
    model = _model(folder, method)
    randomize(model, "default", seed=3)
    if isinstance(method, IA3Config):  # scales around 1, as trained ones are
        for w in injection.adapter_weights_by_key(model.backbone, "default").values():
            w.assign(1 + 0.3 * np.random.default_rng(5).normal(size=w.shape).astype("float32"))
    before = _logits(model)
    assert np.abs(before - _logits(_model(folder, None))).max() > 1e-2 * np.abs(before).max()
    model.merge_adapter("default")
    np.testing.assert_allclose(_logits(model), before, atol=2e-5 * np.abs(before).max())


def test_ia3_scales_keys_values_and_the_down_projection_input(folder):
    model = _model(folder, IA3Config())
    randomize(model, "default", seed=1)
    reference = NumpyGemma3(folder)
    for key, unit in injection.units_of(model.backbone, "default").items():
        i, site = layer_site(key)
        scale = unit.scale.numpy().astype(np.float64).reshape(-1)
        name = f"layers.{i}.{HF_MODULES[site]}.weight"
        reference.w[name] *= scale[:, None] if unit.position == "output" else scale[None, :]
    expected = reference(IDS)
    assert_adapted_logits(_logits(model), expected, NumpyGemma3(folder)(IDS))


def test_houlsby_adapters_add_after_the_post_norms(folder):
    """No dropout before Gemma's residual adds: a bottleneck acts on the post-norm's
    output (and Houlsby trains copies of the pre-norms)."""
    model = _model(folder, "houlsby")
    randomize(model, "default", seed=2)
    units = injection.units_of(model.backbone, "default")
    assert sorted(units)[:4] == ["decoder_block_0/feedforward_layer_norm", "decoder_block_0/post_attention_layer_norm",
                                 "decoder_block_0/post_feedforward_layer_norm", "decoder_block_0/self_attention_layer_norm"]
    reference = NumpyGemma3(folder)
    for i in range(LAYERS):
        for site, name in (("self_attention_layer_norm", "input_layernorm"),
                           ("feedforward_layer_norm", "pre_feedforward_layernorm")):
            reference.w[f"layers.{i}.{name}.weight"] = units[f"decoder_block_{i}/{site}"].layer.scale.numpy()

    def bottleneck(i, which, h):
        unit = units[f"decoder_block_{i}/post_{which}_layer_norm"]
        down, down_bias, up, up_bias = (np.asarray(p, np.float64) for p in unit.projections())
        return h + np.maximum(h @ down + down_bias, 0) @ up + up_bias

    expected = reference(IDS, sublayer_output=bottleneck)
    assert_adapted_logits(_logits(model), expected, NumpyGemma3(folder)(IDS))


def test_prompt_tuning_puts_unscaled_virtual_tokens_in_front(folder):
    model = _model(folder, PromptConfig(num_virtual_tokens=3, init="random"))
    randomize(model, "default")
    (prompt,) = injection.adapter_weights_by_key(model.backbone, "default").values()
    expected = NumpyGemma3(folder)(IDS, virtual=prompt.numpy().astype(np.float64))[:, 3:]
    assert_adapted_logits(_logits(model), expected, NumpyGemma3(folder)(IDS))


def test_a_prompt_from_text_starts_as_the_words_scaled_vectors(folder):
    """peft starts a text-initialised prompt from the model's input embeddings: Gemma's are scaled."""
    model = _model(folder, PromptConfig(num_virtual_tokens=2, init="text", init_text="abc ab"))
    (prompt,) = injection.adapter_weights_by_key(model.backbone, "default").values()
    table = NumpyGemma3(folder).w["embed_tokens.weight"]
    ids = [TOKENS.index("abc"), TOKENS.index("▁ab")]
    np.testing.assert_allclose(prompt.numpy(), table[ids] * np.sqrt(table.shape[1]), rtol=1e-6)


def test_prefix_tuning_reads_unrotated_keys_first(folder):
    model = _model(folder, PrefixConfig(prefix_length=3, reparameterize=False))
    randomize(model, "default")
    past = prefix_past(model)
    expected = NumpyGemma3(folder)(IDS, past=past)
    assert_adapted_logits(_logits(model), expected, NumpyGemma3(folder)(IDS))


@pytest.mark.parametrize("method", LEFT_PADDING_METHODS)
def test_left_padded_batches_decode_what_full_forwards_decode(folder, method):
    """Rows of different lengths, one longer than the window, share a cache padded on the left."""
    model = _model(folder, left_padding_config(method, ALL_LINEAR))
    randomize(model, "default", seed=4)
    assert_left_padded_decoding(model, method, NumpyGemma3(folder), lambda m: _with_lora(folder, m),
                                ["abc ab c a12", "a1", "b"], 6)  # 7, 3 and 2 tokens (with <bos>): two rows padded


def test_a_peft_lora_folder_of_gemma3_loads(folder, tmp_path):
    reference, rng, tensors, rank, alpha = NumpyGemma3(folder), np.random.default_rng(0), {}, 2, 4.0
    for i in range(LAYERS):
        for module in ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj"):
            weight = reference.w[f"layers.{i}.{module}.weight"]  # [out, in]
            a, b = rng.normal(0, 0.3, (rank, weight.shape[1])), rng.normal(0, 0.3, (weight.shape[0], rank))
            tensors[f"base_model.model.model.layers.{i}.{module}.lora_A.weight"] = a
            tensors[f"base_model.model.model.layers.{i}.{module}.lora_B.weight"] = b
            weight += alpha / rank * (b.astype(np.float32) @ a.astype(np.float32))
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": "google/gemma-3-270m", "task_type": "CAUSAL_LM", "peft_type": "LORA", "r": rank,
        "lora_alpha": alpha, "target_modules": ["q_proj", "v_proj", "gate_proj"], "lora_dropout": 0.0}))
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(peft / "adapter_model.safetensors"))
    model = AdapterCausalLM.from_adapter(peft, preset=folder)
    assert set(model.adapter_config().target_modules) == {"query", "value", "feedforward_gate_dense"}
    expected = reference(IDS)
    assert_adapted_logits(_logits(model), expected, NumpyGemma3(folder)(IDS))


def test_a_chat_template_s_bos_token_becomes_the_start_id_once(tmp_path):
    """Gemma's template writes `{{ bos_token }}`; its SentencePiece keeps <bos> a control piece,
    which text never matches: the start id goes in as an id, as Hugging Face's chat tokenization does."""
    model = _model(tiny_gemma3_folder(tmp_path, chat_template=CHAT_TEMPLATE), None)
    bos, turn = TOKENS.index("<bos>"), TOKENS.index("<start_of_turn>")
    ids = model._prompt_ids(model.prompt_texts(["ab"], chat=True)[0])
    assert ids[:2] == [bos, turn] and ids.count(bos) == 1
    (inputs, _, _), = model.dataset([{"prompt": "ab", "completion": "c"}], batch_size=1, chat=True).unbatch().take(1)
    assert inputs["token_ids"].numpy().tolist()[:2] == [bos, turn]


@pytest.mark.parametrize("method, message", [
    ("bitfit", "has no bias"),
    ({"method": "pfeiffer", "original_ln_before": True}, "pre-norm"),
    ({"method": "prompt", "placement": "after_cls"}, "placement 'before_cls'"),
])
def test_what_gemma_cannot_take_is_refused_by_name_and_changes_nothing(folder, method, message):
    model = _model(folder, None)
    before = _logits(model)
    with pytest.raises(ValueError, match=message):
        model.add_adapter("a", method)
    assert model.adapter_names == []
    np.testing.assert_array_equal(_logits(model), before)


@pytest.mark.slow  # a training: CI runs it with the slow tests
def test_lora_trains_on_gemma3_and_its_folder_reloads(folder, tmp_path):
    records = [{"prompt": "ab c", "completion": "cab"}, {"prompt": "a1b2", "completion": "12 ab"},
               {"prompt": "abc", "completion": "a"}]
    model = _model(folder, LoRAConfig(rank=4, target_modules=ALL_LINEAR))
    before = model.perplexity(records)["loss"]
    model.compile(learning_rate=3e-2)
    model.fit(model.dataset(records * 4, batch_size=4, shuffle=True), epochs=3, verbose=0)
    assert model.perplexity(records)["loss"] < 0.7 * before
    model.save_adapter(tmp_path / "adapter")
    again = AdapterCausalLM.from_adapter(tmp_path / "adapter", preset=folder)
    np.testing.assert_allclose(_logits(again), _logits(model), atol=1e-5)
    assert again.generate(["ab", "a1b2 c"], max_new_tokens=5) == model.generate(["ab", "a1b2 c"], max_new_tokens=5)
    model.set_active_adapters(None)
    np.testing.assert_allclose(_logits(model), NumpyGemma3(folder)(IDS), atol=1e-5 * np.abs(_logits(model)).max())
