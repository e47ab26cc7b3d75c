"""Weighted LoRA merging (peft's add_weighted_adapter), checked in float64."""

import numpy as np
import pytest
from conftest import TEXTS
from conftest import token_batch

import keras_adapters as ka
from keras_adapters.core import injection
from keras_adapters.core.merging import COMBINATIONS


QV = ("query", "value")  # two sites keep the float32 error of these large random updates near 1e-6


def _model(preset):
    model = ka.AdapterTextClassifier.from_preset(
        preset, num_classes=4, method=ka.LoRAConfig(target_modules=QV), sequence_length=16
    )
    model.add_adapter("b", ka.LoRAConfig(rank=8, alpha=8.0, target_modules=QV))
    rng = np.random.default_rng(0)
    for w in injection.adapter_weights(model.backbone):
        w.assign(w.numpy() + 0.3 * rng.standard_normal(w.shape).astype("float32"))
    return model


def _delta(model, name, site="transformer_layer_0/query"):
    """The update a LoRA adapter makes to one kernel, in float64."""
    unit = injection.units_of(model.backbone, name)[site]
    a = unit.lora_a.numpy().astype("f8")
    b = unit.lora_b.numpy().astype("f8")
    return unit.scaling * a @ b


def _sequence(model, name):
    model.set_active_adapters(name)
    return model.backbone(token_batch(vocabulary_size=30))["sequence_output"].numpy()


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_one_adapter_at_weight_one_reproduces_itself(tiny_preset, combination):
    model = _model(tiny_preset)
    ka.merge_lora_adapters(model, {"default": 1.0}, "copy", combination=combination, density=1.0)
    for site in injection.units_of(model.backbone, "default"):
        np.testing.assert_allclose(_delta(model, "copy", site), _delta(model, "default", site), atol=1e-6)
    np.testing.assert_allclose(_sequence(model, "copy"), _sequence(model, "default"), atol=1e-5)
    model.set_active_adapters("copy")
    merged = model.predict(TEXTS, verbose=0)
    model.set_active_adapters("default")
    np.testing.assert_allclose(merged, model.predict(TEXTS, verbose=0), atol=1e-6)


def test_cat_is_the_exact_weighted_sum_of_updates(tiny_preset):
    model = _model(tiny_preset)
    ka.merge_lora_adapters(model, {"default": 0.7, "b": 0.3}, "mix", combination="cat")
    assert model.adapter_config("mix").rank == 16
    expected = 0.7 * _delta(model, "default") + 0.3 * _delta(model, "b")
    np.testing.assert_allclose(_delta(model, "mix"), expected, atol=1e-6)
    # ... which is what Average computes at each site, without a new adapter.
    model.set_active_adapters(ka.Average("default", "b", weights=[0.7, 0.3]))
    average = model.backbone(token_batch(vocabulary_size=30))["sequence_output"].numpy()
    np.testing.assert_allclose(_sequence(model, "mix"), average, atol=1e-5)


def test_svd_is_the_best_low_rank_approximation(tiny_preset):
    model = _model(tiny_preset)
    ka.merge_lora_adapters(model, {"default": 0.5, "b": 0.5}, "svd4", combination="svd", svd_rank=4)
    target = 0.5 * _delta(model, "default") + 0.5 * _delta(model, "b")
    sigma = np.linalg.svd(target, compute_uv=False)
    error = np.linalg.norm(_delta(model, "svd4") - target)
    np.testing.assert_allclose(error, np.sqrt((sigma[4:] ** 2).sum()), rtol=1e-4)
    assert error > 1e-3  # rank 4 < 16: not exact, and not vacuous


def test_linear_follows_peft_definition(tiny_preset):
    """peft: A = sum sqrt(w) s A_i, B = sum sqrt(w) B_i (cross terms included)."""
    model = _model(tiny_preset)
    ka.merge_lora_adapters(model, {"default": 0.6, "b": 0.4}, "lin", combination="linear")
    units = {n: injection.units_of(model.backbone, n)["transformer_layer_1/value"] for n in ("default", "b")}
    a = sum(np.sqrt(w) * units[n].scaling * units[n].lora_a.numpy() for n, w in (("default", 0.6), ("b", 0.4)))
    b = sum(np.sqrt(w) * units[n].lora_b.numpy() for n, w in (("default", 0.6), ("b", 0.4)))
    np.testing.assert_allclose(_delta(model, "lin", "transformer_layer_1/value"), a @ b, atol=1e-5)


def test_ties_and_dare_prune(tiny_preset):
    model = _model(tiny_preset)
    ka.merge_lora_adapters(model, {"default": 1.0}, "ties", combination="ties", density=0.5)
    unit = injection.units_of(model.backbone, "ties")["transformer_layer_0/query"]
    kept = np.count_nonzero(unit.lora_a.numpy()) / unit.lora_a.numpy().size
    assert kept == pytest.approx(0.5, abs=0.01)
    ka.merge_lora_adapters(model, {"default": 1.0}, "dare", combination="dare_linear", density=0.5)
    unit = injection.units_of(model.backbone, "dare")["transformer_layer_0/query"]
    assert 0.35 < np.count_nonzero(unit.lora_a.numpy()) / unit.lora_a.numpy().size < 0.65


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"combination": "sum"}, "combination must be one of"),
        ({"combination": "ties"}, "needs density"),
        ({"combination": "linear", "weights": {"default": 1.0, "h": 1.0}}, "Only LoRA adapters"),
        ({"combination": "linear", "weights": {"default": 1.0, "r4": 1.0}}, "same rank"),
        ({"combination": "linear", "weights": {"default": float("nan")}}, "must be a finite number, got nan"),
        ({"combination": "cat", "weights": {"default": float("inf")}}, "must be a finite number, got inf"),
        ({"combination": "linear", "weights": {"default": -0.5}}, "takes square roots of the weights"),
        ({"combination": "dare_ties", "density": 0.5, "weights": {"default": -1.0}}, "must be >= 0"),
        ({"combination": "svd", "svd_rank": 0}, "svd_rank must be a whole number >= 1, got 0"),
        ({"combination": "svd", "svd_rank": 1000}, "svd_rank 1000 is more than"),
        ({"combination": "cat", "svd_rank": 2}, "svd_rank is for combination='svd'"),
    ],
)
def test_bad_merges_are_refused(tiny_preset, kwargs, message):
    model = _model(tiny_preset)
    model.add_adapter("h", "houlsby")
    model.add_adapter("r4", ka.LoRAConfig(rank=4, target_modules=QV))
    weights = kwargs.pop("weights", {"default": 1.0})
    with pytest.raises(ValueError, match=message):
        ka.merge_lora_adapters(model, weights, "m", **kwargs)


def test_a_negative_weight_subtracts_an_adapter(tiny_preset):
    model = _model(tiny_preset)
    ka.merge_lora_adapters(model, {"default": 1.0, "b": -0.5}, "diff", combination="cat")
    expected = _delta(model, "default") - 0.5 * _delta(model, "b")
    np.testing.assert_allclose(_delta(model, "diff"), expected, atol=1e-5)
    assert np.isfinite(_sequence(model, "diff")).all()


def test_cat_of_adapters_with_rank_patterns_keeps_each_sites_rank(tiny_preset):
    model = _model(tiny_preset)
    model.add_adapter("p", ka.LoRAConfig(rank=2, alpha=4.0, target_modules=QV, rank_pattern={"transformer_layer_1/value": 5}))
    rng = np.random.default_rng(1)
    for w in injection.adapter_weights_by_key(model.backbone, "p").values():
        w.assign(rng.standard_normal(w.shape).astype("float32"))
    ka.merge_lora_adapters(model, {"default": 0.5, "p": 2.0}, "both", combination="cat")
    for site in injection.units_of(model.backbone, "both"):
        expected = 0.5 * _delta(model, "default", site) + 2.0 * _delta(model, "p", site)
        np.testing.assert_allclose(_delta(model, "both", site), expected, atol=1e-5)
    assert injection.units_of(model.backbone, "both")["transformer_layer_1/value"].rank == 8 + 5
    assert injection.units_of(model.backbone, "both")["transformer_layer_0/value"].rank == 8 + 2
    with pytest.raises(ValueError, match=r"same rank \(at transformer_layer_0/query: \[8, 2\]\)"):
        ka.merge_lora_adapters(model, {"default": 0.5, "p": 0.5}, "lin", combination="linear")
