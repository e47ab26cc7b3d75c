"""Adapters on a Llama decoder (`AdapterCausalLM`), checked against a float64
NumPy Llama whose weights carry the same updates: LoRA on every projection,
(IA)^3; cached generation against greedy decoding by full forwards; the loss
over completion tokens only; training that leaves the backbone untouched;
adapter folders; and what the decoder refuses, by name."""

import json

import numpy as np
import pytest
import tokenizers

from keras_adapters.core import injection
from keras_adapters.io import chat_template
from keras_adapters.io import presets
from keras_adapters.methods.ia3 import IA3Config
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.prefix import PrefixConfig
from keras_adapters.methods.prompt import PromptConfig
from keras_adapters.models.causal_lm import AdapterCausalLM
from keras_adapters.tasks import causal_lm as data_lib

from conftest import tiny_backbone
from decoder_checks import assert_adapted_logits
from decoder_checks import greedy_by_full_forwards
from decoder_checks import prefix_past
from llama_reference import NumpyLlama
from tiny_llama import FFN, HEADS, TOKENS, tiny_llama_folder

ALL_LINEAR = ("query", "key", "value", "attention_output", "feedforward_gate_dense",
              "feedforward_intermediate_dense", "feedforward_output_dense")
#: Our site -> the Hugging Face module of a Llama layer.
HF_MODULES = {"query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
              "attention_output": "self_attn.o_proj", "feedforward_gate_dense": "mlp.gate_proj",
              "feedforward_intermediate_dense": "mlp.up_proj", "feedforward_output_dense": "mlp.down_proj"}
IDS = np.array([[3, 9, 6, 11, 4, 7, 8], [5, 5, 10, 3, 6, 9, 4]])
RECORDS = [{"prompt": "ab c", "completion": "cab"}, {"prompt": "a1b2", "completion": "12 ab"},
           {"prompt": "abc", "completion": "a"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny_llama"))


def _randomize(model, name, seed=0):
    """Nonzero values for every weight of adapter `name` (they start as the identity)."""
    rng = np.random.default_rng(seed)
    for w in injection.adapter_weights_by_key(model.backbone, name).values():
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32") + (1.0 if w.path.endswith("scale") else 0.0))


def _logits(model, ids):
    return np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}), np.float64)


def _layer_site(key):
    layer, site = key.split("/")
    return int(layer.rsplit("_", 1)[1]), site


def test_lora_on_every_projection_computes_the_llama_with_updated_weights(folder):
    model = AdapterCausalLM.from_preset(folder, method=LoRAConfig(rank=2, alpha=3.0, target_modules=ALL_LINEAR))
    _randomize(model, "default")
    reference = NumpyLlama(folder)
    for key, unit in injection.units_of(model.backbone, "default").items():
        i, site = _layer_site(key)
        a, b = unit.lora_a.numpy().astype(np.float64), unit.lora_b.numpy().astype(np.float64)
        delta = (a @ b) * unit.scaling  # [in, out] over flattened kernel axes (heads-major, as HF's rows)
        reference.w[f"model.layers.{i}.{HF_MODULES[site]}.weight"] += delta.T
    assert len(injection.units_of(model.backbone, "default")) == 2 * len(ALL_LINEAR)
    expected = reference(IDS)
    assert_adapted_logits(_logits(model, IDS), expected, NumpyLlama(folder)(IDS))


def test_ia3_scales_keys_values_and_the_down_projection_input(folder):
    model = AdapterCausalLM.from_preset(folder, method=IA3Config())
    _randomize(model, "default", seed=1)
    reference = NumpyLlama(folder)
    for key, unit in injection.units_of(model.backbone, "default").items():
        i, site = _layer_site(key)
        scale = unit.scale.numpy().astype(np.float64).reshape(-1)
        name = f"model.layers.{i}.{HF_MODULES[site]}.weight"
        if unit.position == "output":
            reference.w[name] *= scale[:, None]  # each output row
        else:
            reference.w[name] *= scale[None, :]  # each input column
    expected = reference(IDS)
    np.testing.assert_allclose(_logits(model, IDS), expected, atol=2e-4 * np.abs(expected).max())


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "parallel", {"method": "lora", "use_dora": True}])
def test_other_methods_start_as_the_backbone_act_once_trained_and_delete_cleanly(folder, method):
    model = AdapterCausalLM.from_preset(folder, method=None)
    before = _logits(model, IDS)
    model.add_adapter("a", method)
    model.train_adapter("a")
    np.testing.assert_allclose(_logits(model, IDS), before, atol=1e-5 * np.abs(before).max())
    _randomize(model, "a")
    assert np.abs(_logits(model, IDS) - before).max() > 1e-3 * np.abs(before).max()
    model.delete_adapter("a")
    np.testing.assert_array_equal(_logits(model, IDS), before)


def test_a_bottleneck_on_the_feed_forward_output_adds_before_the_residual(folder):
    """Pfeiffer's place on a decoder with no dropout there: the down projection's output."""
    model = AdapterCausalLM.from_preset(folder, method="pfeiffer")
    units = injection.units_of(model.backbone, "default")
    assert sorted(units) == ["transformer_layer_0/feedforward_output_dense", "transformer_layer_1/feedforward_output_dense"]
    _randomize(model, "default")
    layer = model.backbone.transformer_layers[0]
    x = np.random.default_rng(2).normal(0, 1, (1, 4, FFN)).astype("float32")
    site = layer._feedforward_output_dense
    unit = site.units["default"]
    base = np.asarray(site.base(x), np.float64)
    down, down_bias, up, up_bias = (np.asarray(p, np.float64) for p in unit.projections())
    expected = base + np.maximum(base @ down + down_bias, 0) @ up + up_bias
    np.testing.assert_allclose(np.asarray(site(x)), expected, atol=1e-5 * np.abs(expected).max())


def test_cached_generation_decodes_what_full_forwards_decode(folder):
    model = AdapterCausalLM.from_preset(folder, method=LoRAConfig(rank=2, target_modules=("query", "value")))
    _randomize(model, "default")
    reference = NumpyLlama(folder)
    for key, unit in injection.units_of(model.backbone, "default").items():
        i, site = _layer_site(key)
        reference.w[f"model.layers.{i}.{HF_MODULES[site]}.weight"] += (
            unit.lora_a.numpy().astype(np.float64) @ unit.lora_b.numpy() * unit.scaling).T
    prompts = ["abc ab", "a1"]  # different lengths: the shorter row decodes past the longer's prompt
    texts = model.generate(prompts, max_new_tokens=6, stop_token_ids=None)
    for prompt, text in zip(prompts, texts):
        expected = greedy_by_full_forwards(reference, model._prompt_ids(prompt), 6)
        assert text == str(model.tokenizer.detokenize(np.array(expected, np.int32)))


def test_labels_are_the_next_tokens_and_only_completions_weigh(folder):
    model = AdapterCausalLM.from_preset(folder, method=None, sequence_length=64)
    (inputs, labels, weights), = list(model.dataset(RECORDS[:1], batch_size=1))
    prompt = [int(t) for t in np.asarray(model.tokenizer("ab c"))]
    completion = [int(t) for t in np.asarray(model.tokenizer("cab"))] + [TOKENS.index("<|im_end|>")]
    whole = prompt + completion
    n = len(whole) - 1
    assert inputs["token_ids"].shape[1] == data_lib.BUCKET_STEP  # padded to a multiple of the step
    np.testing.assert_array_equal(inputs["token_ids"][0, :n], whole[:-1])
    np.testing.assert_array_equal(labels[0, :n], whole[1:])
    np.testing.assert_array_equal(weights[0], [0] * (len(prompt) - 1) + [1] * len(completion) + [0] * (32 - n))
    np.testing.assert_array_equal(inputs["padding_mask"][0], [True] * n + [False] * (32 - n))


@pytest.mark.slow  # ~25 s: keeps the default run under 15 minutes (CI runs it with -m slow)
def test_batches_keep_the_data_order_unless_bucketed_by_length(folder):
    model = AdapterCausalLM.from_preset(folder, method=None, sequence_length=64)
    short, long = {"prompt": "ab", "completion": "c"}, {"prompt": "ab " * 20, "completion": "c"}
    records = [short, long, short, long]

    def widths_and_lengths(**options):
        batches = list(model.dataset(records, batch_size=2, **options))
        return [(int(x["token_ids"].shape[1]), np.asarray(x["padding_mask"]).sum(1).tolist()) for x, _, _ in batches]

    short_n, long_n = widths_and_lengths()[0][1]
    assert short_n < data_lib.BUCKET_STEP < long_n <= 2 * data_lib.BUCKET_STEP
    # In order, as PyTorch loops batch: each batch one short and one long example, padded to 2 steps.
    assert widths_and_lengths() == [(2 * data_lib.BUCKET_STEP, [short_n, long_n])] * 2
    # Bucketed: the short examples train together, padded to one step, the long ones to two.
    assert sorted(widths_and_lengths(bucket_by_sequence_length=True)) == [
        (data_lib.BUCKET_STEP, [short_n, short_n]), (2 * data_lib.BUCKET_STEP, [long_n, long_n])]


def test_a_conversation_weighs_the_last_answer_as_the_template_writes_it(folder):
    model = AdapterCausalLM.from_preset(folder, method=None)
    record = {"messages": [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "c1"}]}
    (inputs, labels, weights), = list(model.dataset([record], batch_size=1))
    # The tiny template: <|im_start|>{content}<|im_end|> per message, nothing else.
    answer = [TOKENS.index("<|im_start|>"), TOKENS.index("c"), TOKENS.index("1"), TOKENS.index("<|im_end|>")]
    chosen = np.asarray(labels[0])[np.asarray(weights[0]) == 1]
    assert chosen.tolist() == answer


@pytest.mark.slow  # 16-21 s: the default run stays under 15 minutes
def test_evaluation_loss_and_perplexity_are_the_float64_completion_nll(folder):
    model = AdapterCausalLM.from_preset(folder, method=None, sequence_length=64)
    reference = NumpyLlama(folder)
    total, count = 0.0, 0
    for record in RECORDS:
        prompt = [int(t) for t in np.asarray(model.tokenizer(record["prompt"]))]
        completion = [int(t) for t in np.asarray(model.tokenizer(record["completion"]))] + [2]
        ids = np.array([prompt + completion])
        logits = reference(ids[:, :-1])[0]
        log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        for position in range(len(prompt) - 1, ids.shape[1] - 1):
            total -= log_probs[position, ids[0, position + 1]]
            count += 1
    report = model.perplexity(RECORDS)
    assert report["tokens"] == count
    assert report["loss"] == pytest.approx(total / count, rel=1e-4)
    assert report["perplexity"] == pytest.approx(np.exp(total / count), rel=1e-4)
    model.compile()
    assert model.evaluate(model.dataset(RECORDS, batch_size=3), verbose=0)[0] == pytest.approx(total / count, rel=1e-4)


@pytest.mark.slow  # a few trainings or exports: CI runs it with the slow tests
def test_fit_trains_the_adapter_alone_and_lowers_the_completion_loss(folder, tmp_path):
    model = AdapterCausalLM.from_preset(folder, method="lora", sequence_length=64)
    originals = {w.path: w.numpy().copy() for w in injection.get_state(model.backbone).original_weights}
    before = model.perplexity(RECORDS)["loss"]
    model.compile(learning_rate=1e-2)
    model.fit(model.dataset(RECORDS * 4, batch_size=4, shuffle=True), epochs=3, verbose=0)
    assert model.perplexity(RECORDS)["loss"] < 0.7 * before
    for w in injection.get_state(model.backbone).original_weights:
        np.testing.assert_array_equal(w.numpy(), originals[w.path], err_msg=w.path)
    assert all(w.path.split("/")[-1] in ("lora_a", "lora_b") for w in model.trainable_weights)

    model.save_adapter(tmp_path / "adapter")
    again = AdapterCausalLM.from_adapter(tmp_path / "adapter", preset=folder)
    np.testing.assert_allclose(_logits(again, IDS), _logits(model, IDS), atol=1e-5)
    assert again.generate("ab", max_new_tokens=5) == model.generate("ab", max_new_tokens=5)


def test_prompt_tuning_puts_virtual_tokens_in_front_as_peft_does(folder):
    model = AdapterCausalLM.from_preset(folder, method=PromptConfig(num_virtual_tokens=3, init="random"))
    assert model.adapter_config().placement == "before_cls"  # the decoder's only placement, by default
    _randomize(model, "default")
    (prompt,) = injection.adapter_weights_by_key(model.backbone, "default").values()
    expected = NumpyLlama(folder)(IDS, virtual=prompt.numpy().astype(np.float64))[:, 3:]
    got = _logits(model, IDS)
    assert_adapted_logits(got, expected, NumpyLlama(folder)(IDS))


@pytest.mark.slow  # a few trainings or exports: CI runs it with the slow tests
def test_a_prompt_adapter_trains_alone_and_its_folder_reloads(folder, tmp_path):
    model = AdapterCausalLM.from_preset(folder, method=PromptConfig(num_virtual_tokens=4, init="text",
                                                                     init_text="abc"), sequence_length=64)
    (prompt,) = model.trainable_weights
    # init="text": the vectors start as the word embeddings of the text's tokens, repeated.
    text_ids = np.resize(np.asarray(model.tokenizer("abc")), 4)
    np.testing.assert_array_equal(prompt.numpy(), np.asarray(model.backbone.token_embedding(text_ids)))
    before = model.perplexity(RECORDS)["loss"]
    model.compile(learning_rate=0.3)
    model.fit(model.dataset(RECORDS * 4, batch_size=4, shuffle=True), epochs=6, verbose=0)
    # Four vectors steer a two-layer random model only so far (0.91x measured); untrained they change nothing.
    assert model.perplexity(RECORDS)["loss"] < 0.95 * before
    assert [w.path.split("/")[-1] for w in model.trainable_weights] == ["prompt"]
    model.save_adapter(tmp_path / "adapter")
    again = AdapterCausalLM.from_adapter(tmp_path / "adapter", preset=folder)
    np.testing.assert_allclose(_logits(again, IDS), _logits(model, IDS), atol=1e-5)
    assert again.generate(["ab", "a1b2 c"], max_new_tokens=5) == model.generate(["ab", "a1b2 c"], max_new_tokens=5)


def test_prefix_tuning_puts_keys_and_values_in_front_of_every_layer_s_cache_as_peft_does(folder):
    model = AdapterCausalLM.from_preset(folder, method=PrefixConfig(prefix_length=3, reparameterize=False))
    _randomize(model, "default")
    expected = NumpyLlama(folder)(IDS, past=prefix_past(model))
    assert_adapted_logits(_logits(model, IDS), expected, NumpyLlama(folder)(IDS))


@pytest.mark.slow  # a few trainings or exports: CI runs it with the slow tests
def test_a_prefix_trains_through_its_mlp_and_saves_the_prefixes_it_computes(folder, tmp_path):
    model = AdapterCausalLM.from_preset(folder, method=PrefixConfig(prefix_length=4, bottleneck_size=8),
                                        sequence_length=64)
    before = model.perplexity(RECORDS)["loss"]
    model.compile(learning_rate=3e-2)
    model.fit(model.dataset(RECORDS * 4, batch_size=4, shuffle=True), epochs=3, verbose=0)
    assert model.perplexity(RECORDS)["loss"] < 0.6 * before  # 0.40x measured
    model.save_adapter(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["method"]["reparameterize"] is False
    again = AdapterCausalLM.from_adapter(tmp_path / "adapter", preset=folder)
    np.testing.assert_allclose(_logits(again, IDS), _logits(model, IDS), atol=1e-5)
    assert again.generate(["ab", "a1b2 c"], max_new_tokens=5) == model.generate(["ab", "a1b2 c"], max_new_tokens=5)


def test_an_adapter_is_refused_on_another_checkpoint(folder, tmp_path):
    model = AdapterCausalLM.from_preset(folder, method="lora")
    model.save_adapter(tmp_path / "adapter")
    other = AdapterCausalLM.from_preset(tiny_llama_folder(tmp_path / "other", seed=1), method=None)
    with pytest.raises(ValueError, match="different checkpoint"):
        other.load_adapter(tmp_path / "adapter")
    assert other.adapter_names == []
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["task"]["type"] = "text_classification"
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="load that one with AdapterModel"):
        model.load_adapter(tmp_path / "adapter", name="b")


@pytest.mark.parametrize("method, message", [
    ({"method": "prompt", "placement": "after_cls"}, "placement 'before_cls'.*decoders have no \\[CLS\\]"),
    ("bitfit", "has no bias"),
    ({"method": "pfeiffer", "original_ln_before": True}, "pre-norm"),
    ({"method": "lora", "target_modules": ["query", "feedforward_gate_dense"]}, None),
])
def test_what_a_decoder_cannot_take_is_refused_by_name_and_changes_nothing(folder, method, message):
    model = AdapterCausalLM.from_preset(folder, method=None)
    before = _logits(model, IDS)
    if message is None:
        model.add_adapter("a", method)  # the gate projection is a Llama site
        assert sorted(injection.units_of(model.backbone, "a"))[0] == "transformer_layer_0/feedforward_gate_dense"
        return
    with pytest.raises(ValueError, match=message):
        model.add_adapter("a", method)
    assert model.adapter_names == []
    np.testing.assert_array_equal(_logits(model, IDS), before)


def test_the_gate_projection_is_refused_on_bert():
    with pytest.raises(ValueError, match=r"puts units at \['feedforward_gate_dense'\], which bert layers do not have"):
        injection.add_adapter(tiny_backbone(), "a", LoRAConfig(target_modules=("feedforward_gate_dense",)))


@pytest.mark.parametrize("line, message", [
    ("not json", r"data.jsonl:1: not a JSON object"),
    ('{"prompt": "a"}', r"a record is .*got \['prompt'\]"),
    ('{"messages": [{"role": "user", "content": "a"}]}', "last message of a conversation is the assistant"),
])
def test_bad_records_are_named_with_their_line(tmp_path, line, message):
    path = tmp_path / "data.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(data_lib.CausalLMDataError, match=message):
        data_lib.read(path)


def test_chat_prompts_are_written_with_the_template(folder):
    model = AdapterCausalLM.from_preset(folder, method=None)
    assert model.prompt_texts(["ab"], chat=True) == ["<|im_start|>ab<|im_end|>"]
    assert model.prompt_texts([[{"role": "user", "content": "c"}]]) == ["<|im_start|>c<|im_end|>"]
    assert model.prompt_texts(["ab"]) == ["ab"]
    assert HEADS == 4  # the fixture's grouped-query attention: 4 query heads over 2 key/value heads


@pytest.mark.slow
def test_smollm2_starts_as_itself_under_a_fresh_lora_and_learns_an_answer(smollm2_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_ADAPTERS_CACHE", str(tmp_path / "cache"))
    model = AdapterCausalLM.from_preset(str(smollm2_gguf), method="lora", sequence_length=64)
    question = [{"role": "user", "content": "What is the secret word?"}]
    prompts = ["What is the capital of France?", question]  # one batch: one compiled decoding loop
    paris, secret = model.generate(prompts, max_new_tokens=12, chat=True)
    assert "Paris" in paris and "zebracorn" not in secret
    records = [{"messages": [*question, {"role": "assistant", "content": "The secret word is zebracorn."}]}] * 8
    # Trained on the tokens Hugging Face's tokenizer writes (17 special tokens: keras-hub's graph
    # tokenizer split some of them, which ones changing with each process's string hashing).
    reference = tokenizers.Tokenizer.from_file(f"{presets.resolve_preset(str(smollm2_gguf))}/tokenizer.json")
    expected = reference.encode(chat_template.render(model.template, records[0]["messages"],
                                                     special_tokens=model.special_tokens)).ids[:-1]
    inputs, _, _ = next(iter(model.dataset(records[:1], batch_size=1)))
    assert inputs["token_ids"][0, : len(expected)].numpy().tolist() == expected
    model.compile(learning_rate=2e-3)
    history = model.fit(model.dataset(records, batch_size=4), epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] / 4
    paris, secret = model.generate(prompts, max_new_tokens=12, chat=True)
    assert "zebracorn" in secret


def test_generation_stops_at_a_stop_token_and_checks_its_arguments(folder):
    model = AdapterCausalLM.from_preset(folder, method=None)
    ids = model._prompt_ids("ab c")
    full = greedy_by_full_forwards(NumpyLlama(folder), ids, 8)
    stop = full[2]  # a token the greedy path reaches: generation ends before it
    cut = full[: full.index(stop)]
    expected = str(model.tokenizer.detokenize(np.array(cut, np.int32))) if cut else ""
    assert model.generate("ab c", max_new_tokens=8, stop_token_ids=(stop,)) == expected
    assert model._generated_ids(["ab c"], 8, (stop,)) == [cut]
    assert model.stop_token_ids == (TOKENS.index("<|im_end|>"),)
    for bad, message in [({"max_new_tokens": 0}, "max_new_tokens must be a whole number of at least 1"),
                         ({"batch_size": 0}, "batch_size must be"), ({"sampler": None}, "pass a sampler")]:
        with pytest.raises(ValueError, match=message):
            model.generate("ab", **{"max_new_tokens": 4, **bad})


@pytest.mark.slow  # ~25 s: keeps the default run under 15 minutes (CI runs it with -m slow)
def test_examples_without_room_for_their_completion_are_left_out(folder):
    model = AdapterCausalLM.from_preset(folder, method=None, sequence_length=3)
    long_prompt = {"prompt": "ab c ab c ab c", "completion": "a"}
    assert len(list(model.dataset([long_prompt, RECORDS[2]], batch_size=1))) == 1  # "abc" -> "a" fits in 3
    with pytest.raises(ValueError, match="No completion tokens to score"):
        model.perplexity([long_prompt])


def test_a_sentencepiece_llama_tokenizer_is_refused(folder, tmp_path):
    import shutil

    copy = shutil.copytree(folder, tmp_path / "spm")
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"], tokenizer["decoder"] = {"type": "Metaspace"}, {"type": "Metaspace"}
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ValueError, match="not a byte-level BPE tokenizer"):
        AdapterCausalLM.from_preset(str(copy), method=None)
