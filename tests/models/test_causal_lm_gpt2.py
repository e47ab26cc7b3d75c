"""Adapters on a GPT-2 decoder (`AdapterCausalLM`, the GPT-2 family), checked
against a float64 NumPy GPT-2 (`gpt2_reference`) whose weights carry the same
updates: LoRA on every projection (Hugging Face's fused `c_attn` too), BitFit
on every bias, prompt and prefix tuning with GPT-2's absolute positions (the
virtual tokens at 0..., the tokens after a prefix at its length...), cached
generation of left-padded batches against greedy decoding by full forwards,
peft folders of GPT-2 (`c_attn` split into query, key and value), and the
position table's limit refused by name."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from keras_adapters.core import injection
from keras_adapters.methods.bitfit import BitFitConfig
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.prefix import PrefixConfig
from keras_adapters.methods.prompt import PromptConfig
from keras_adapters.models.causal_lm import AdapterCausalLM

from decoder_checks import LEFT_PADDING_METHODS
from decoder_checks import assert_adapted_logits
from decoder_checks import assert_left_padded_decoding
from decoder_checks import left_padding_config
from decoder_checks import logits
from decoder_checks import prefix_past
from decoder_checks import randomize
from gpt2_reference import NumpyGPT2
from tiny_gpt2 import HIDDEN, POSITIONS, tiny_gpt2_folder

ALL_LINEAR = ("query", "key", "value", "attention_output", "feedforward_intermediate_dense", "feedforward_output_dense")
#: Our site -> (Hugging Face module of a GPT-2 block, its output columns); q, k, v share `c_attn`.
HF = {"query": ("attn.c_attn", slice(0, HIDDEN)), "key": ("attn.c_attn", slice(HIDDEN, 2 * HIDDEN)),
      "value": ("attn.c_attn", slice(2 * HIDDEN, 3 * HIDDEN)), "attention_output": ("attn.c_proj", slice(None)),
      "feedforward_intermediate_dense": ("mlp.c_fc", slice(None)), "feedforward_output_dense": ("mlp.c_proj", slice(None)),
      "self_attention_layer_norm": ("ln_1", slice(None)), "feedforward_layer_norm": ("ln_2", slice(None))}
IDS = np.array([[1, 9, 4, 11, 2, 7, 8], [3, 3, 10, 1, 6, 9, 4]])
RECORDS = [{"prompt": "ab c", "completion": "cab"}, {"prompt": "a1b2", "completion": "12 ab"},
           {"prompt": "abc", "completion": "a"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_gpt2_folder(tmp_path_factory.mktemp("tiny_gpt2"))


def _logits(model, ids=None):
    return logits(model, IDS if ids is None else ids)


def _model(folder, method):
    return AdapterCausalLM.from_preset(folder, method=method, sequence_length=24)


def _site(key):
    layer, site = key.split("/")
    return f"h.{int(layer.rsplit('_', 1)[1])}.", site


def _with_lora(folder, model, name="default"):
    """The NumPy GPT-2 with each LoRA unit's `scaling * A B` added to its Conv1D weight `[in, out]`."""
    reference = NumpyGPT2(folder)
    for key, unit in injection.units_of(model.backbone, name).items():
        prefix, site = _site(key)
        module, columns = HF[site]
        delta = unit.lora_a.numpy().astype(np.float64) @ unit.lora_b.numpy().astype(np.float64) * unit.scaling
        reference.w[f"{prefix}{module}.weight"][:, columns] += delta
    return reference


def test_the_backbone_computes_the_checkpoint(folder):
    model = _model(folder, None)
    expected = NumpyGPT2(folder)(IDS)
    np.testing.assert_allclose(_logits(model), expected, atol=1e-5 * np.abs(expected).max())
    assert model.start_token_id is None and model.stop_token_ids == (0,)  # GPT-2 adds no start token


def test_a_stop_id_of_0_ends_rows_only_where_generated(folder):
    """GPT-2's <|endoftext|> is id 0 here, the value unwritten slots could hold."""
    model = _model(folder, None)
    prompts = ["ab c", "a1", "cab 12"]
    free = model._generated_ids(prompts, 6, None)
    expected = [model.tokenizer.detokenize(np.array(row[: row.index(0)] if 0 in row else row, np.int32))
                for row in free]
    assert model.generate(prompts, max_new_tokens=6) == expected
    assert any(expected)


def test_lora_on_every_projection_computes_gpt2_with_updated_conv1d_weights(folder):
    model = _model(folder, LoRAConfig(rank=2, alpha=3.0, target_modules=ALL_LINEAR))
    randomize(model, "default")
    assert len(injection.units_of(model.backbone, "default")) == 2 * len(ALL_LINEAR)
    expected = _with_lora(folder, model)(IDS)
    assert_adapted_logits(_logits(model), expected, NumpyGPT2(folder)(IDS))


def test_bitfit_shifts_every_bias_of_the_decoder(folder):
    model = _model(folder, BitFitConfig())
    randomize(model, "default", seed=1)
    reference = NumpyGPT2(folder)
    units = injection.units_of(model.backbone, "default")
    assert len(units) == 2 * 8  # six projections and two layer norms per layer
    for key, unit in units.items():
        prefix, site = _site(key)
        module, columns = HF[site]
        reference.w[f"{prefix}{module}.bias"][columns] += unit.shift.numpy().reshape(-1)
    expected = reference(IDS)
    assert_adapted_logits(_logits(model), expected, NumpyGPT2(folder)(IDS))


def test_prompt_tuning_gives_the_virtual_tokens_the_first_positions(folder):
    model = _model(folder, PromptConfig(num_virtual_tokens=3, init="random"))
    randomize(model, "default")
    (prompt,) = injection.adapter_weights_by_key(model.backbone, "default").values()
    expected = NumpyGPT2(folder)(IDS, virtual=prompt.numpy().astype(np.float64))[:, 3:]
    # The check can fail: without the virtual tokens (and their positions) the logits are the backbone's.
    assert_adapted_logits(_logits(model), expected, NumpyGPT2(folder)(IDS))


def test_prefix_tuning_numbers_the_tokens_after_the_prefix(folder):
    model = _model(folder, PrefixConfig(prefix_length=3, reparameterize=False))
    randomize(model, "default")
    past = prefix_past(model)
    expected = NumpyGPT2(folder)(IDS, past=past)
    assert_adapted_logits(_logits(model), expected, NumpyGPT2(folder)(IDS))


@pytest.mark.parametrize("method", LEFT_PADDING_METHODS)
def test_left_padded_batches_decode_what_full_forwards_decode(folder, method):
    """Rows of different lengths share a cache padded on the left: each row's
    positions must still start at 0 (after virtual tokens or a prefix)."""
    model = _model(folder, left_padding_config(method, ALL_LINEAR))
    randomize(model, "default", seed=4)
    assert_left_padded_decoding(model, method, NumpyGPT2(folder), lambda m: _with_lora(folder, m),
                                ["abc ab", "a1", "b"], 5)  # 4, 2 and 1 tokens: two rows padded


def _peft_folder(path, config, tensors):
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "gpt2", "task_type": "CAUSAL_LM",
                                                          **config}))
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(path / "adapter_model.safetensors"))
    return path


def test_a_peft_lora_on_the_fused_attention_projection_loads_split(folder, tmp_path):
    """peft's GPT-2 LoRA adapts `c_attn` (q, k and v in one module): one A, a B
    of 3 x hidden rows; here three units with that A and a third of B each."""
    reference, rng, tensors, rank, alpha = NumpyGPT2(folder), np.random.default_rng(0), {}, 2, 6.0
    for i in range(2):
        for module in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            weight = reference.w[f"h.{i}.{module}.weight"]  # Conv1D: [in, out]
            a, b = rng.normal(0, 0.3, (rank, weight.shape[0])), rng.normal(0, 0.3, (weight.shape[1], rank))
            tensors[f"base_model.model.transformer.h.{i}.{module}.lora_A.weight"] = a
            tensors[f"base_model.model.transformer.h.{i}.{module}.lora_B.weight"] = b
            weight += alpha / rank * (b.astype(np.float32) @ a.astype(np.float32)).T
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": ["c_attn", "c_proj", "c_fc"],
              "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": True}
    model = AdapterCausalLM.from_adapter(_peft_folder(tmp_path / "peft", config, tensors), preset=folder)
    assert set(model.adapter_config().target_modules) == set(ALL_LINEAR)
    expected = reference(IDS)
    assert_adapted_logits(_logits(model), expected, NumpyGPT2(folder)(IDS))


def test_a_peft_ia3_scales_the_fused_keys_values_and_the_feed_forward_input(folder, tmp_path):
    """peft's GPT-2 (IA)^3: `c_attn`'s outputs (all three thirds) and `mlp.c_proj`'s input."""
    reference, rng, tensors = NumpyGPT2(folder), np.random.default_rng(1), {}
    for i in range(2):
        out_scale, in_scale = rng.uniform(0.5, 1.5, (3 * HIDDEN, 1)), rng.uniform(0.5, 1.5, (1, 4 * HIDDEN))
        tensors[f"base_model.model.transformer.h.{i}.attn.c_attn.ia3_l"] = out_scale
        tensors[f"base_model.model.transformer.h.{i}.mlp.c_proj.ia3_l"] = in_scale
        p = f"h.{i}."
        # (x W + b) * l = x (W l) + b l for the output scale; the input scale multiplies W's rows.
        reference.w[p + "attn.c_attn.weight"] *= out_scale.astype(np.float32).T
        reference.w[p + "attn.c_attn.bias"] *= out_scale.astype(np.float32)[:, 0]
        reference.w[p + "mlp.c_proj.weight"] *= in_scale.astype(np.float32).T
    config = {"peft_type": "IA3", "target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"]}
    model = AdapterCausalLM.from_adapter(_peft_folder(tmp_path / "peft", config, tensors), preset=folder)
    expected = reference(IDS)
    assert_adapted_logits(_logits(model), expected, NumpyGPT2(folder)(IDS))


def test_a_peft_prefix_is_the_past_key_values_peft_hands_the_model(folder, tmp_path):
    """peft's PREFIX_TUNING saves `[virtual tokens, layers * 2 * heads * head_dim]`
    and views it as `(tokens, layers * 2, heads, head_dim)`: layer i's keys are
    block 2i, its values block 2i + 1."""
    length, layers, heads, dim = 3, 2, 4, HIDDEN // 4
    rows = np.random.default_rng(2).normal(0, 1.0, (length, layers * 2 * heads * dim))
    config = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": length, "num_layers": layers,
              "num_attention_heads": heads, "token_dim": HIDDEN, "prefix_projection": False}
    model = AdapterCausalLM.from_adapter(_peft_folder(tmp_path / "peft", config, {"prompt_embeddings": rows}),
                                         preset=folder)
    viewed = rows.reshape(length, layers * 2, heads, dim)
    past = np.stack([np.stack([viewed[:, 2 * i], viewed[:, 2 * i + 1]]) for i in range(layers)])
    expected = NumpyGPT2(folder)(IDS, past=past.astype(np.float32).astype(np.float64))
    assert_adapted_logits(_logits(model), expected, NumpyGPT2(folder)(IDS))


def test_rows_longer_than_the_position_table_are_refused_by_name(folder):
    model = _model(folder, PromptConfig(num_virtual_tokens=4, init="random"))
    # 4 virtual tokens, 1 prompt token and 36 new ones take positions 0..39 (the last new token is not fed back).
    with pytest.raises(ValueError, match=f"more than the {POSITIONS} this backbone's position embeddings have; "
                                         "ask for max_new_tokens=36 or fewer"):
        model.generate("ab", max_new_tokens=37)
    assert len(model._generated_ids(["ab"], 36, None)[0]) == 36  # the whole table
    with pytest.raises(ValueError, match="pass sequence_length=36 or less"):
        AdapterCausalLM.from_preset(folder, method=PromptConfig(num_virtual_tokens=4), sequence_length=37).dataset(RECORDS)
    assert AdapterCausalLM.from_preset(folder, method=None).sequence_length == POSITIONS  # the default fits


@pytest.mark.slow  # a training: CI runs it with the slow tests
def test_lora_trains_on_gpt2_and_its_folder_reloads(folder, tmp_path):
    model = _model(folder, LoRAConfig(rank=4, target_modules=ALL_LINEAR))
    before = model.perplexity(RECORDS)["loss"]
    model.compile(learning_rate=3e-2)
    model.fit(model.dataset(RECORDS * 4, batch_size=4, shuffle=True), epochs=3, verbose=0)
    assert model.perplexity(RECORDS)["loss"] < 0.7 * before
    model.save_adapter(tmp_path / "adapter")
    again = AdapterCausalLM.from_adapter(tmp_path / "adapter", preset=folder)
    np.testing.assert_allclose(_logits(again), _logits(model), atol=1e-5)
    assert again.generate(["ab", "a1b2 c"], max_new_tokens=5) == model.generate(["ab", "a1b2 c"], max_new_tokens=5)
    # The backbone is untouched: without the adapter it is the checkpoint again.
    model.set_active_adapters(None)
    np.testing.assert_allclose(_logits(model), NumpyGPT2(folder)(IDS), atol=1e-5 * np.abs(_logits(model)).max())
