"""The shared insertion mechanism, on a tiny random BERT."""

import keras
import numpy as np
import pytest
from conftest import randomize_adapter_weights
from conftest import tiny_backbone
from conftest import token_batch

import keras_adapters as ka
from keras_adapters.core import injection
from keras_adapters.core.injection import SITES
from keras_adapters.core.injection import AdapterSite
from keras_adapters.core.injection import adapter_weights
from keras_adapters.methods.registry import METHODS

EXPECTED_SITES = {
    "houlsby": ("self_attention_dropout", "feedforward_dropout", "self_attention_layer_norm", "feedforward_layer_norm"),
    "pfeiffer": ("feedforward_dropout",),
    "lora": ("query", "key", "value", "attention_output", "feedforward_intermediate_dense",
             "feedforward_output_dense"),
    "ia3": ("key", "value", "feedforward_output_dense"),
    "bitfit": ("query", "key", "value", "attention_output", "feedforward_intermediate_dense",
               "feedforward_output_dense", "self_attention_layer_norm", "feedforward_layer_norm"),
    "prompt": (),
    "prefix": ("self_attention", "key", "value"),
    "mam": ("self_attention", "key", "value", "feedforward_intermediate_dense", "feedforward_dropout"),
    "parallel": ("feedforward_intermediate_dense", "feedforward_dropout"),
    "compacter": ("self_attention_dropout", "feedforward_dropout", "self_attention_layer_norm",
                  "feedforward_layer_norm"),
    "compacter++": ("feedforward_dropout",),
    "full": (),
    "head": (),
}


def _sequence_output(backbone, x):
    return backbone(x, training=False)["sequence_output"].numpy()


# "full" and "head" inject nothing (test_full_trains_everything_head_nothing covers them).
@pytest.mark.parametrize(
    "method", sorted(m for m in METHODS if not METHODS[m].changes_sequence and EXPECTED_SITES[m])
)
def test_injected_backbone_starts_as_the_original(method):
    x = token_batch()
    reference = _sequence_output(tiny_backbone(), x)
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, method)
    np.testing.assert_allclose(_sequence_output(backbone, x), reference, atol=1e-6)
    # Not vacuous: the method's units are there (and move the output once trained).
    assert len(injection.units_of(backbone, "default")) == 2 * len(EXPECTED_SITES[method])
    randomize_adapter_weights(backbone)
    assert np.abs(_sequence_output(backbone, x) - reference).max() > 1e-3


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "lora", "ia3", "bitfit", "parallel"])
def test_units_sit_at_their_sites(method):
    backbone = tiny_backbone()
    originals = {id(w) for w in backbone.weights}
    units = ka.inject_adapters(backbone, method)
    expected = {f"transformer_layer_{i}/{site}" for i in range(2) for site in EXPECTED_SITES[method]}
    assert set(units) == expected
    for path, unit in units.items():
        encoder, site = path.split("/", 1)
        parent = backbone.get_layer(encoder)
        *parents, attr = SITES[site]
        for name in parents:
            parent = getattr(parent, name)
        holder = getattr(parent, attr)
        # Tracked in place of the original, exactly once; the unit inside it.
        assert isinstance(holder, AdapterSite) and holder.units["default"] is unit
        assert holder in parent._layers and holder.base not in parent._layers
    # No weight counted twice, and the originals are all still there.
    assert len({id(w) for w in backbone.weights}) == len(backbone.weights)
    assert originals <= {id(w) for w in backbone.weights}


def test_houlsby_trains_its_own_layer_norm_copies_not_the_originals():
    backbone = tiny_backbone()
    originals = {id(w) for w in backbone.weights}
    ka.inject_adapters(backbone, "houlsby")
    trainable = backbone.trainable_weights
    assert not [w for w in trainable if id(w) in originals]
    norms = [w for w in trainable if "layer_norm" in w.path]
    assert len(norms) == 2 * 2 * 2  # 2 layers x 2 norms x (gamma, beta)
    assert {id(w) for w in trainable} == {id(w) for w in adapter_weights(backbone)}


def test_keys_are_the_release_0_1_names():
    backbone = tiny_backbone()
    injection.add_adapter(backbone, "a", "houlsby")
    injection.add_adapter(backbone, "b", ka.LoRAConfig(target_modules=("query",)))
    keys_a = injection.adapter_weights_by_key(backbone, "a")
    keys_b = injection.adapter_weights_by_key(backbone, "b")
    assert "transformer_layer_0/feedforward_adapter/down/kernel" in keys_a
    assert "transformer_layer_1/self_attention_layer_norm/gamma" in keys_a
    assert sorted(keys_b) == [
        f"transformer_layer_{i}/self_attention_layer/query/lora_{m}" for i in range(2) for m in "ab"
    ]
    assert not {id(w) for w in keys_a.values()} & {id(w) for w in keys_b.values()}


def test_several_adapters_switch_and_delete_back_to_the_original():
    x = token_batch()
    reference = _sequence_output(tiny_backbone(), x)
    backbone = tiny_backbone()
    for name, method in (("a", "houlsby"), ("b", "lora"), ("c", "ia3")):
        injection.add_adapter(backbone, name, method)
    randomize_adapter_weights(backbone)
    outputs = {}
    for name in "abc":
        injection.set_active(backbone, name)
        outputs[name] = _sequence_output(backbone, x)
    assert min(np.abs(outputs[p] - outputs[q]).max() for p, q in ("ab", "bc", "ac")) > 1e-3
    injection.set_active(backbone, None)
    np.testing.assert_allclose(_sequence_output(backbone, x), reference, atol=1e-6)
    injection.set_active(backbone, "b")
    for name in "abc":
        injection.delete_adapter(backbone, name)
    assert injection.get_state(backbone).active is None
    assert not any(isinstance(layer, AdapterSite) for layer in backbone._flatten_layers())
    assert len(backbone.weights) == len(tiny_backbone().weights)
    np.testing.assert_allclose(_sequence_output(backbone, x), reference, atol=1e-6)


def test_stack_composes_units_at_a_site():
    """Bottleneck outputs feed the next; LoRA updates add; IA3 scales multiply."""
    backbone = tiny_backbone()
    for name, method in (("h1", "pfeiffer"), ("h2", "pfeiffer"), ("l1", "lora"), ("l2", "lora"), ("i", "ia3")):
        injection.add_adapter(backbone, name, method)
    randomize_adapter_weights(backbone)
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 5, 16)).astype("float32")
    state = injection.get_state(backbone)
    site = state.sites["transformer_layer_0/feedforward_dropout"]
    h1, h2 = site.units["h1"], site.units["h2"]
    injection.set_active(backbone, ka.Stack("h1", "h2"))
    expected = h2.transform_output(h1.transform_output(y))
    np.testing.assert_allclose(site(y).numpy(), expected.numpy(), atol=1e-6)
    value = state.sites["transformer_layer_0/value"]
    base = value.base(y).numpy()
    deltas = {n: value.units[n](y).numpy() - base for n in ("l1", "l2")}
    scale = value.units["i"].scale.numpy()
    injection.set_active(backbone, ka.Stack("l1", "l2", "i"))
    np.testing.assert_allclose(value(y).numpy(), (base + deltas["l1"] + deltas["l2"]) * scale, atol=1e-5)
    injection.set_active(backbone, ka.Average("l1", "l2", weights=[3, 1]))
    np.testing.assert_allclose(value(y).numpy(), base + 0.75 * deltas["l1"] + 0.25 * deltas["l2"], atol=1e-5)


def test_parallel_gives_each_branch_its_own_rows():
    x = token_batch()
    backbone = tiny_backbone()
    injection.add_adapter(backbone, "a", "houlsby")
    injection.add_adapter(backbone, "b", "lora")
    randomize_adapter_weights(backbone)
    alone = {}
    for name in "ab":
        injection.set_active(backbone, name)
        alone[name] = _sequence_output(backbone, x)
    injection.set_active(backbone, ka.Parallel("a", "b"))
    doubled = {k: np.concatenate([v, v]) for k, v in x.items()}
    both = _sequence_output(backbone, doubled)
    np.testing.assert_allclose(both[:3], alone["a"], atol=1e-5)
    np.testing.assert_allclose(both[3:], alone["b"], atol=1e-5)


@pytest.mark.parametrize("scaling", [4.0, "learned"])
def test_parallel_adapter_adds_its_scaled_bottleneck_of_the_block_input(scaling):
    backbone = tiny_backbone()
    injection.add_adapter(backbone, "p", ka.ParallelAdapterConfig(reduction_factor=4, scaling=scaling))
    randomize_adapter_weights(backbone)
    injection.set_active(backbone, "p")
    state = injection.get_state(backbone)
    read = state.sites["transformer_layer_1/feedforward_intermediate_dense"]
    write = state.sites["transformer_layer_1/feedforward_dropout"]
    reader = read.units["p"]
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((2, 2, 5, 16)).astype("float32")
    np.testing.assert_allclose(read(x).numpy(), read.base(x).numpy(), atol=1e-6)  # the block itself unchanged
    d, u = (np.asarray(w.numpy(), "f8") for w in (reader.down.kernel, reader.up.kernel))
    db, ub = (np.asarray(w.numpy(), "f8") for w in (reader.down.bias, reader.up.bias))
    s = 4.0 if scaling == 4.0 else float(reader.learned_scaling.numpy())
    assert s != 1.0
    expected = y + s * (np.maximum(x @ d + db, 0) @ u + ub)
    np.testing.assert_allclose(write(y).numpy(), expected, rtol=1e-5, atol=1e-5)


class _NoTokens:
    """An input-end unit that inserts nothing: run_backbone then runs by hand."""

    num_virtual_tokens = 0
    placement = "after_cls"

    def insert(self, x, mask):
        return x, mask


def test_running_the_backbone_by_hand_is_its_functional_graph(monkeypatch):
    x = token_batch()
    backbone = tiny_backbone()
    injection.add_adapter(backbone, "a", "houlsby")
    randomize_adapter_weights(backbone)
    injection.set_active(backbone, "a")
    graph = backbone(x)
    monkeypatch.setattr(injection, "_input_units", lambda state: [_NoTokens()])
    by_hand = injection.run_backbone(backbone, x)
    for key in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(by_hand[key].numpy(), graph[key].numpy(), atol=1e-6)


def test_mam_is_its_prefix_and_its_parallel_adapter_together():
    x = token_batch()
    backbone = tiny_backbone()
    mam = ka.MAMConfig(prefix_length=2, reparameterize=False, bottleneck_size=4, scaling=2.0)
    injection.add_adapter(backbone, "mam", mam)
    injection.add_adapter(backbone, "prefix", ka.PrefixConfig(prefix_length=2, reparameterize=False))
    injection.add_adapter(backbone, "parallel", ka.ParallelAdapterConfig(bottleneck_size=4, scaling=2.0))
    assert len(injection.units_of(backbone, "mam")) == 2 * 5
    randomize_adapter_weights(backbone, scale=0.5)
    for path, unit in injection.units_of(backbone, "mam").items():
        twin = injection.units_of(backbone, "prefix" if "/feedforward" not in path else "parallel")[path]
        for mine, theirs in zip(unit.weights, twin.weights):
            theirs.assign(mine)
    outputs = {}
    for spec in ("mam", ka.Stack("prefix", "parallel"), "prefix"):
        injection.set_active(backbone, spec)
        outputs[str(spec)] = _sequence_output(backbone, x)
    np.testing.assert_allclose(outputs["mam"], outputs[str(ka.Stack("prefix", "parallel"))], atol=1e-5)
    assert np.abs(outputs["mam"] - outputs["prefix"]).max() > 1e-3
    assert mam.as_saved().get_config()["reparameterize"] is False


def test_prompt_stacks_with_other_adapters_and_deletes_cleanly():
    x = token_batch()
    backbone = tiny_backbone()
    count = len(backbone.weights)
    injection.add_adapter(backbone, "p", ka.PromptConfig(num_virtual_tokens=3, init="random"))
    injection.add_adapter(backbone, "l", "lora")
    randomize_adapter_weights(backbone)
    assert len(backbone.weights) == count + 1 + 24  # the prompt, then A and B at 6 sites x 2 layers
    outputs = {}
    for spec in ("p", "l", ka.Stack("p", "l")):
        injection.set_active(backbone, spec)
        outputs[str(spec)] = injection.run_backbone(backbone, x)["sequence_output"].numpy()
    assert outputs["p"].shape == (3, 10, 16)
    assert min(np.abs(outputs[a] - outputs[b]).max() for a in outputs for b in outputs if a != b) > 1e-3
    for block in (ka.Parallel("p", "l"), ka.Average("p", "l"), ka.Route("p", "l")):
        with pytest.raises(ValueError, match="'p' is a 'prompt' adapter .* alone or in a Stack"):
            injection.set_active(backbone, block)
    injection.delete_adapter(backbone, "p")
    injection.delete_adapter(backbone, "l")
    assert len(backbone.weights) == count and not hasattr(backbone, injection._INPUT_ATTR)


def test_full_trains_everything_head_nothing():
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "full")
    assert len(backbone.trainable_weights) == len(backbone.weights)
    with pytest.raises(ValueError, match="must be the model's only adapter"):
        injection.add_adapter(backbone, "other", "lora")
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "head")
    assert backbone.trainable_weights == []


def test_target_layers_restricts_injection():
    backbone = tiny_backbone()
    units = ka.inject_adapters(
        backbone, ka.LoRAConfig(target_layers="transformer_layer_1", target_modules=("key",))
    )
    assert list(units) == ["transformer_layer_1/key"]
    with pytest.raises(ValueError, match="matches none of the encoder layers"):
        ka.inject_adapters(tiny_backbone(), ka.LoRAConfig(target_layers="layer_9"))


@pytest.mark.parametrize("name, message", [("a", "already an adapter"), ("a/b", "letters, digits"), ("", "letters, digits")])
def test_bad_or_taken_names_are_refused(name, message):
    backbone = tiny_backbone()
    injection.add_adapter(backbone, "a", "lora")
    with pytest.raises(ValueError, match=message):
        injection.add_adapter(backbone, name, "ia3")


def test_missing_site_fails_before_changing_anything():
    backbone = tiny_backbone()
    encoder = backbone.get_layer("transformer_layer_1")
    # Simulate a keras-hub release that renamed a sublayer.
    object.__setattr__(encoder, "_feedforward_dropout", None)
    trainable_before = [w.trainable for w in backbone.weights]
    with pytest.raises(RuntimeError, match="lays out TransformerEncoder differently"):
        ka.inject_adapters(backbone, "houlsby")
    assert not injection.get_state(backbone).configs
    assert [w.trainable for w in backbone.weights] == trainable_before
    first = backbone.get_layer("transformer_layer_0")
    assert not isinstance(first._self_attention_dropout, AdapterSite)


def test_non_transformer_backbone_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="no transformer layers keras-adapters knows"):
        ka.inject_adapters(model, "lora")


DORA = {"method": "lora", "use_dora": True, "use_rslora": True, "target_modules": ["value", "attention_output",
                                                                            "feedforward_intermediate_dense"]}


@pytest.mark.parametrize("method", ["lora", "ia3", DORA, "bitfit"], ids=["lora", "ia3", "dora", "bitfit"])
def test_merge_keeps_outputs_and_removes_units(method):
    x = token_batch()
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, method)
    randomize_adapter_weights(backbone)
    adapted = _sequence_output(backbone, x)
    injection.merge_adapter(backbone, "default")
    assert not injection.get_state(backbone).configs
    assert not any(isinstance(layer, AdapterSite) for layer in backbone._flatten_layers())
    assert len(backbone.weights) == len(tiny_backbone().weights)
    np.testing.assert_allclose(_sequence_output(backbone, x), adapted, atol=1e-4)
    assert np.abs(_sequence_output(tiny_backbone(), x) - adapted).max() > 1e-3


def test_merge_is_refused_without_changes():
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "houlsby")
    with pytest.raises(ValueError, match="cannot be merged"):
        injection.merge_adapter(backbone, "default")
    assert list(injection.get_state(backbone).configs) == ["default"]
    injection.add_adapter(backbone, "lora", "lora")
    with pytest.raises(ValueError, match=r"adapters \['default'\] were\s+trained on"):
        injection.merge_adapter(backbone, "lora")


def test_adapter_weights_stay_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "houlsby")
    x = token_batch()
    out = backbone(x)["sequence_output"]
    assert out.dtype == "bfloat16"
    weights = adapter_weights(backbone)
    assert weights and all(w.dtype == "float32" for w in weights)
