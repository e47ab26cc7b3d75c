"""Method configs and their layers, against float64 references."""

import keras
import numpy as np
import pytest

import keras_adapters as ka
from keras_adapters.methods.base import Shared
from keras_adapters.methods.registry import METHODS


@pytest.mark.parametrize("method", sorted(METHODS))
def test_config_round_trip(method):
    config = ka.get_adapter_config(method)
    data = config.get_config()
    assert data["method"] == method
    again = ka.get_adapter_config(data)
    assert again == config
    assert type(again) is METHODS[method]


def test_non_default_config_round_trip():
    config = ka.LoRAConfig(rank=4, alpha=8, dropout=0.1, target_modules=("query", "key"))
    assert ka.LoRAConfig.from_config(config.get_config()) == config
    config = ka.HoulsbyConfig(bottleneck_size=7, activation="gelu", target_layers="transformer_layer_[01]")
    assert ka.get_adapter_config(config.get_config()) == config


def test_unknown_method_names_the_available_ones():
    with pytest.raises(ValueError, match=r"Unknown adapter method 'adaptr'.*houlsby"):
        ka.get_adapter_config("adaptr")
    with pytest.raises(ValueError, match="'method' key"):
        ka.get_adapter_config({"rank": 8})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ka.LoRAConfig(rank=0), "rank must be a positive integer"),
        (lambda: ka.LoRAConfig(alpha=-1), "alpha must be > 0"),
        (lambda: ka.LoRAConfig(dropout=1.5), r"dropout must be in \[0, 1\)"),
        (lambda: ka.LoRAConfig(target_modules=("qkv",)), "target_modules"),
        (lambda: ka.HoulsbyConfig(reduction_factor=0), "reduction_factor"),
        (lambda: ka.HoulsbyConfig(init="random"), "init must be one of"),
        (lambda: ka.PfeifferConfig(activation="nope"), "not a Keras activation"),
        (lambda: ka.IA3Config(target_modules=("feedforward_layer_norm",)), "target_modules"),
        (lambda: ka.IA3Config(feedforward_modules=("pooler",)), "feedforward_modules"),
        (lambda: ka.HoulsbyConfig(target_layers="(["), "regular expression"),
    ],
)
def test_invalid_fields_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_from_config_refuses_unknown_fields():
    with pytest.raises(ValueError, match=r"Unknown field\(s\) \['rnak'\]"):
        ka.LoRAConfig.from_config({"method": "lora", "rnak": 4})


def _dense(units, in_dim, activation=None, seed=0):
    layer = keras.layers.Dense(units, activation=activation)
    layer.build((None, in_dim))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.standard_normal((in_dim, units)).astype("float32"))
    layer.bias.assign(rng.standard_normal((units,)).astype("float32"))
    return layer


def _einsum_query(hidden=8, heads=2, head_dim=3, seed=0):
    layer = keras.layers.EinsumDense(
        "abc,cde->abde", output_shape=(None, heads, head_dim), bias_axes="de"
    )
    layer.build((None, None, hidden))
    rng = np.random.default_rng(seed)
    layer.kernel.assign(rng.standard_normal((hidden, heads, head_dim)).astype("float32"))
    layer.bias.assign(rng.standard_normal((heads, head_dim)).astype("float32"))
    return layer


def _randomize(weights, seed=5):
    rng = np.random.default_rng(seed)
    for w in weights:
        w.assign(rng.standard_normal(w.shape).astype("float32"))


def test_lora_on_attention_projection_matches_float64_reference():
    base = _einsum_query()
    lora = ka.LoRALayer(base, rank=2, alpha=6)
    lora.build((None, None, 8))
    x = np.random.default_rng(1).standard_normal((2, 4, 8)).astype("float32")
    np.testing.assert_allclose(lora(x), base(x), atol=1e-6)  # B starts at zero
    _randomize([lora.lora_a, lora.lora_b])
    a, b = lora.lora_a.numpy().astype("f8"), lora.lora_b.numpy().astype("f8")
    w = base.kernel.numpy().astype("f8").reshape(8, 6)
    x64 = x.astype("f8")
    expected = x64 @ w + base.bias.numpy().reshape(6) + (6 / 2) * x64 @ a @ b
    np.testing.assert_allclose(lora(x), expected.reshape(2, 4, 2, 3), rtol=1e-5, atol=1e-4)


def test_lora_on_output_projection_contracts_heads():
    base = keras.layers.EinsumDense("abcd,cde->abe", output_shape=(None, 8), bias_axes="e")
    base.build((None, None, 2, 3))
    lora = ka.LoRALayer(base, rank=2, alpha=2)
    lora.build((None, None, 2, 3))
    assert tuple(lora.lora_a.shape) == (6, 2) and tuple(lora.lora_b.shape) == (2, 8)
    _randomize([lora.lora_a, lora.lora_b])
    x = np.random.default_rng(2).standard_normal((2, 4, 2, 3)).astype("float32")
    delta = x.reshape(2, 4, 6).astype("f8") @ lora.lora_a.numpy() @ lora.lora_b.numpy()
    np.testing.assert_allclose(lora(x) - base(x), delta, rtol=1e-4, atol=1e-4)


def test_lora_goes_before_a_dense_activation():
    base = _dense(5, 4, activation="gelu")
    lora = ka.LoRALayer(base, rank=2, alpha=2)
    lora.build((None, 4))
    _randomize([lora.lora_a, lora.lora_b])
    x = np.random.default_rng(3).standard_normal((3, 4)).astype("float32")
    pre = x @ base.kernel.numpy() + base.bias.numpy() + x @ lora.lora_a.numpy() @ lora.lora_b.numpy()
    np.testing.assert_allclose(lora(x), keras.activations.gelu(pre), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_base", [_einsum_query, lambda: _dense(6, 8)])
def test_lora_merge_folds_the_update(make_base):
    base = make_base()
    lora = ka.LoRALayer(base, rank=3, alpha=5)
    lora.build((None, None, 8))
    _randomize([lora.lora_a, lora.lora_b])
    x = np.random.default_rng(4).standard_normal((2, 3, 8)).astype("float32")
    before = lora(x).numpy()
    lora.merge()
    np.testing.assert_allclose(base(x), before, rtol=1e-5, atol=1e-5)


def test_ia3_scales_outputs_and_inputs_and_merges():
    base = _einsum_query()
    ia3 = ka.IA3Scaling(base, position="output")
    ia3.build(None)
    x = np.random.default_rng(6).standard_normal((2, 4, 8)).astype("float32")
    np.testing.assert_allclose(ia3(x), base(x), atol=1e-6)
    _randomize([ia3.scale])
    expected = base(x).numpy() * ia3.scale.numpy()
    np.testing.assert_allclose(ia3(x), expected, rtol=1e-5, atol=1e-5)
    ia3.merge()
    np.testing.assert_allclose(base(x), expected, rtol=1e-5, atol=1e-5)

    dense = _dense(3, 8)
    ia3 = ka.IA3Scaling(dense, position="input")
    ia3.build(None)
    assert tuple(ia3.scale.shape) == (8,)
    _randomize([ia3.scale])
    expected = (x * ia3.scale.numpy()) @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(ia3(x), expected, rtol=1e-5, atol=1e-5)
    ia3.merge()
    np.testing.assert_allclose(dense(x), expected, rtol=1e-5, atol=1e-5)


def test_bottleneck_adapter_identity_init_and_reference():
    adapter = ka.BottleneckAdapter(None, bottleneck_size=3, activation="relu")
    adapter.build((None, None, 8))
    x = np.random.default_rng(7).standard_normal((2, 4, 8)).astype("float32")
    np.testing.assert_array_equal(adapter(x), x)
    _randomize(adapter.weights)
    d, u = adapter.down, adapter.up
    hidden = np.maximum(x @ d.kernel.numpy() + d.bias.numpy(), 0)
    np.testing.assert_allclose(adapter(x), x + hidden @ u.kernel.numpy() + u.bias.numpy(), rtol=1e-5, atol=1e-5)


def test_bottleneck_near_identity_init_is_small_but_not_zero():
    # Seeded, and inputs of both signs: with ones, all 4 ReLU units were off (diff 0) once in 16 draws.
    keras.utils.set_random_seed(0)
    adapter = ka.BottleneckAdapter(None, bottleneck_size=4, init="near_identity")
    adapter.build((None, None, 32))
    x = np.random.default_rng(0).normal(size=(1, 2, 32)).astype("float32")
    diff = np.abs(adapter(x).numpy() - x).max()
    assert 0 < diff < 0.05
    with pytest.raises(ValueError, match="cannot be merged"):
        adapter.merge()


def test_layers_serialize_their_hyperparameters():
    layer = ka.BottleneckAdapter(None, bottleneck_size=3, activation="gelu", name="ad")
    again = ka.BottleneckAdapter.from_config(layer.get_config())
    assert again.bottleneck_size == 3 and again.name == "ad"
    assert keras.activations.serialize(again.activation) == "gelu"
    config = ka.LoRALayer(_dense(2, 2), rank=2, alpha=4, dropout=0.1).get_config()
    assert (config["rank"], config["alpha"], config["dropout"]) == (2, 4, 0.1)


def test_kernel_split_refuses_unusual_einsum():
    from keras_adapters.methods.base import kernel_split

    odd = keras.layers.EinsumDense("abc,cd->ad", output_shape=(4,))  # sums over the sequence too
    odd.build((None, None, 3))
    with pytest.raises(ValueError, match="not a plain projection"):
        kernel_split(odd)


@pytest.mark.parametrize("kind", ["lora", "dora", "ia3_output", "ia3_input"])
def test_a_heads_first_kernel_is_adapted_and_merged_in_its_own_layout(kind):
    """Gemma's query kernel is `[heads, hidden, head_dim]` (`btd,ndh->btnh`): the
    update must act on x @ W with W read as [hidden, heads * head_dim], and a
    merge must put it back heads first (float64 reference, then the merged layer)."""
    heads, hidden, size = 3, 5, 4
    base = keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, heads, size))
    base.build((None, None, hidden))
    rng = np.random.default_rng(0)
    base.kernel.assign(rng.normal(size=(heads, hidden, size)).astype("float32"))
    from keras_adapters.methods.base import kernel_split

    assert kernel_split(base) == ((hidden,), (heads, size))
    if kind.startswith("ia3"):
        unit = ka.IA3Scaling(base, position=kind.split("_")[1])
    else:
        unit = ka.LoRALayer(base, rank=2, alpha=3, use_dora=kind == "dora")
    unit.build((None, None, hidden))
    for w in unit.weights:
        w.assign(rng.normal(1.0 if kind.startswith("ia3") else 0.0, 0.5, w.shape).astype("float32"))
    x = rng.normal(size=(2, 3, hidden)).astype("float32")
    kernel = np.transpose(base.kernel.numpy().astype(np.float64), (1, 0, 2)).reshape(hidden, heads * size)
    if kind == "ia3_output":
        kernel = kernel * unit.scale.numpy().reshape(1, -1)
    elif kind == "ia3_input":
        kernel = kernel * unit.scale.numpy().reshape(-1, 1)
    else:
        kernel = kernel + unit.lora_a.numpy() @ unit.lora_b.numpy() * unit.scaling
        if kind == "dora":
            kernel = kernel * unit.magnitude.numpy() / np.linalg.norm(kernel, axis=0)
    expected = (x.astype(np.float64) @ kernel).reshape(2, 3, heads, size)
    np.testing.assert_allclose(np.asarray(unit(x)), expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected - np.asarray(base(x))).max() > 0.1  # the unit changes the output
    unit.merge()
    np.testing.assert_allclose(np.asarray(base(x)), expected, rtol=1e-4, atol=1e-4)


def test_rslora_scales_by_the_square_root_of_the_rank():
    plain = ka.LoRALayer(_dense(6, 8), rank=4, alpha=8)
    rs = ka.LoRALayer(_dense(6, 8), rank=4, alpha=8, use_rslora=True)
    assert (plain.scaling, rs.scaling) == (2.0, 4.0)
    assert ka.LoRAConfig(use_rslora=True).get_config()["use_rslora"] is True


def test_gaussian_init_draws_a_with_stddev_one_over_rank():
    lora = ka.LoRALayer(_dense(64, 256), rank=4, alpha=4, init="gaussian")
    lora.build((None, 256))
    std = float(np.std(lora.lora_a.numpy()))
    assert abs(std - 0.25) < 0.02  # 1024 draws; kaiming would give 1/sqrt(3*256) = 0.036
    assert not np.any(lora.lora_b.numpy())


def _dora_reference(base, lora, x):
    """DoRA in float64 from the definition: m * (W + sAB) / ||W + sAB||_col, plus the bias."""
    w = base.kernel.numpy().astype("f8").reshape(x.shape[-1], -1)
    adapted = w + lora.scaling * lora.lora_a.numpy().astype("f8") @ lora.lora_b.numpy().astype("f8")
    kernel = lora.magnitude.numpy().astype("f8") * adapted / np.linalg.norm(adapted, axis=0)
    return x.astype("f8") @ kernel + base.bias.numpy().astype("f8").reshape(-1)


@pytest.mark.parametrize("make_base", [_einsum_query, lambda: _dense(6, 8)])
def test_dora_starts_as_the_base_and_matches_float64_reference(make_base):
    base = make_base()
    lora = ka.LoRALayer(base, rank=2, alpha=4, use_dora=True)
    lora.build((None, None, 8))
    x = np.random.default_rng(8).standard_normal((2, 4, 8)).astype("float32")
    np.testing.assert_allclose(lora(x), base(x), atol=1e-5)
    np.testing.assert_allclose(lora.magnitude.numpy(), np.linalg.norm(base.kernel.numpy().reshape(8, -1), axis=0),
                               rtol=1e-6)
    _randomize([lora.lora_a, lora.lora_b, lora.magnitude])
    expected = _dora_reference(base, lora, x).reshape(base(x).shape)
    assert np.abs(expected - base(x).numpy()).max() > 0.5  # the update is not negligible
    np.testing.assert_allclose(lora(x), expected, rtol=1e-4, atol=1e-4)
    lora.merge()
    np.testing.assert_allclose(base(x), expected, rtol=1e-4, atol=1e-4)


def test_dora_norm_is_a_constant_in_the_gradient():
    import tensorflow as tf

    base = _dense(6, 8)
    lora = ka.LoRALayer(base, rank=2, alpha=2, use_dora=True)
    lora.build((None, 8))
    _randomize([lora.lora_a, lora.lora_b])
    x = tf.constant(np.random.default_rng(9).standard_normal((3, 8)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(lora(x))
    grad = tape.gradient(loss, lora.lora_b.value)
    # With c = m / ||W + sAB|| held fixed, d sum(x (W + sAB) c) / dB = s A^T (x^T 1 * c).
    adapted = base.kernel.numpy() + lora.scaling * lora.lora_a.numpy() @ lora.lora_b.numpy()
    c = lora.magnitude.numpy() / np.linalg.norm(adapted, axis=0)
    outer = np.outer(x.numpy().sum(0), np.ones(6)) * c
    np.testing.assert_allclose(grad, lora.scaling * lora.lora_a.numpy().T @ outer, rtol=1e-4, atol=1e-5)


def test_lora_options_are_validated():
    with pytest.raises(ValueError, match="use_dora must be True or False"):
        ka.LoRAConfig(use_dora="yes")
    with pytest.raises(ValueError, match="init must be one of"):
        ka.LoRAConfig(init="pissa")


def test_method_options_are_read_by_field_type():
    from keras_adapters.methods.registry import config_from_options

    config = config_from_options("lora", ["rank=4", "alpha=8.5", "use-dora=yes", "target_modules=query, value"])
    assert config == ka.LoRAConfig(rank=4, alpha=8.5, use_dora=True, target_modules=("query", "value"))
    assert config_from_options("houlsby", ["bottleneck_size=none"]).bottleneck_size is None
    with pytest.raises(ValueError, match="rank takes an integer"):
        config_from_options("lora", ["rank=big"])
    with pytest.raises(ValueError, match="use_dora takes true or false"):
        config_from_options("lora", ["use_dora=maybe"])
    with pytest.raises(ValueError, match=r"expected KEY=VALUE .*'use_rslora'"):
        config_from_options("lora", ["rslora"])


def test_bias_shift_goes_before_the_activation_and_merges():
    base = _dense(5, 4, activation="gelu")
    unit = ka.BiasShift(base)
    unit.build((None, 4))
    x = np.random.default_rng(10).standard_normal((3, 4)).astype("float32")
    np.testing.assert_array_equal(unit(x), base(x))
    _randomize([unit.shift])
    pre = x.astype("f8") @ base.kernel.numpy() + base.bias.numpy() + unit.shift.numpy()
    expected = keras.activations.gelu(pre.astype("float32")).numpy()
    np.testing.assert_allclose(unit(x), expected, rtol=1e-5, atol=1e-5)
    unit.merge()
    np.testing.assert_allclose(base(x), expected, rtol=1e-5, atol=1e-5)


def test_bias_shift_on_an_attention_projection_and_a_layer_norm():
    query = _einsum_query()
    unit = ka.BiasShift(query)
    unit.build(None)
    assert tuple(unit.shift.shape) == (2, 3)
    _randomize([unit.shift])
    x = np.random.default_rng(11).standard_normal((2, 4, 8)).astype("float32")
    np.testing.assert_allclose(unit(x), query(x).numpy() + unit.shift.numpy(), rtol=1e-5, atol=1e-5)

    norm = keras.layers.LayerNormalization()
    norm.build((None, None, 8))
    _randomize(norm.weights, seed=12)
    unit = ka.BiasShift(norm)
    unit.build(None)
    _randomize([unit.shift])
    x64 = x.astype("f8")
    normed = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + norm.epsilon)
    expected = normed * norm.gamma.numpy() + norm.beta.numpy() + unit.shift.numpy()
    np.testing.assert_allclose(unit(x), expected, rtol=1e-4, atol=1e-4)
    unit.merge()
    np.testing.assert_allclose(norm(x), expected, rtol=1e-4, atol=1e-4)


def test_bias_shift_needs_a_bias():
    layer = keras.layers.Dense(3, use_bias=False)
    layer.build((None, 2))
    with pytest.raises(ValueError, match="has no bias, so BitFit has nothing to train"):
        ka.BiasShift(layer)


def test_compacter_kernels_are_sums_of_kronecker_products_with_one_shared_rule():
    shared = Shared()
    first = ka.CompacterAdapter(None, bottleneck_size=4, phm_dim=2, phm_rank=2, shared=shared, activation="gelu")
    second = ka.CompacterAdapter(None, bottleneck_size=4, phm_dim=2, phm_rank=2, shared=shared, activation="gelu")
    for unit in (first, second):
        unit.build((None, None, 8))
    assert second.rule is first.rule and len(second.weights) == len(first.weights) - 1
    x = np.random.default_rng(13).standard_normal((2, 3, 8)).astype("float32")
    np.testing.assert_array_equal(first(x), x)  # the up factors start at zero
    _randomize(first.weights + second.weights)
    rule = first.rule.numpy().astype("f8")

    def kernel(left, right):
        return sum(np.kron(rule[i], left.numpy()[i] @ right.numpy()[i]) for i in range(2))

    for unit in (first, second):
        down, up = kernel(unit.down_left, unit.down_right), kernel(unit.up_left, unit.up_right)
        assert down.shape == (8, 4) and up.shape == (4, 8)
        hidden = keras.activations.gelu((x @ down + unit.down_bias.numpy()).astype("float32")).numpy()
        np.testing.assert_allclose(unit(x), x + hidden @ up + unit.up_bias.numpy(), rtol=1e-4, atol=1e-4)


def test_compacter_needs_phm_dim_to_divide_the_sizes():
    unit = ka.CompacterAdapter(None, bottleneck_size=6, phm_dim=4)
    with pytest.raises(ValueError, match="phm_dim 4 must divide"):
        unit.build((None, None, 8))
    assert ka.CompacterConfig(reduction_factor=16).size_for(384) == 24
    assert ka.CompacterConfig(bottleneck_size=10, phm_dim=4).size_for(384) == 8


def test_rank_and_alpha_patterns_set_each_units_rank_and_scaling():
    from conftest import tiny_backbone

    from keras_adapters.core import injection

    config = ka.LoRAConfig(
        rank=4, alpha=8, target_modules=("query", "value"),
        rank_pattern={"transformer_layer_1/value": 2, "query": 6}, alpha_pattern={"value": 3.0},
    )
    backbone = tiny_backbone()
    units = injection.add_adapter(backbone, "a", config)
    got = {path: (u.rank, u.scaling, u.lora_a.shape[1], u.lora_b.shape[0]) for path, u in units.items()}
    assert got["transformer_layer_0/query"] == (6, 8 / 6, 6, 6)  # "query" matches every layer's query
    assert got["transformer_layer_1/query"] == (6, 8 / 6, 6, 6)
    assert got["transformer_layer_0/value"] == (4, 3 / 4, 4, 4)  # rank from `rank`, alpha from its pattern
    assert got["transformer_layer_1/value"] == (2, 3 / 2, 2, 2)
    assert ka.LoRAConfig.from_config(config.get_config()) == config


def test_patterns_match_a_whole_name_or_its_end():
    from keras_adapters.methods.base import pattern_value

    patterns = {"transformer_layer_1/query": 2, "value": 3}
    assert pattern_value(patterns, "transformer_layer_1/query") == 2
    assert pattern_value(patterns, "transformer_layer_11/query") is None  # not a suffix after "/"
    assert pattern_value(patterns, "transformer_layer_4/value") == 3
    assert pattern_value(patterns, "transformer_layer_4/key_value") is None
    assert pattern_value({"(query|key)": 5, "query": 1}, "transformer_layer_0/query") == 5  # first key wins


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank_pattern": {"query": 0}}, r"rank_pattern\['query'\] must be a positive integer"),
        ({"rank_pattern": {"([": 2}}, "key '\\(\\[' is not a regular expression"),
        ({"alpha_pattern": {"value": -1.0}}, r"alpha_pattern\['value'\] must be > 0"),
        ({"rank_pattern": [("query", 2)]}, "must be a dict of unit patterns"),
    ],
)
def test_bad_patterns_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ka.LoRAConfig(**kwargs)


def test_patterns_are_read_as_json_options():
    from keras_adapters.methods.registry import config_from_options

    config = config_from_options("lora", ['rank_pattern={"query": 16}', "alpha_pattern=none"])
    assert config.rank_pattern == {"query": 16} and config.alpha_pattern is None
    with pytest.raises(ValueError, match="rank_pattern takes a JSON object"):
        config_from_options("lora", ["rank_pattern=query:16"])


def _projection(kind):
    """A projection as adapter sites meet them, with non-trivial weights and biases."""
    layers = {
        "dense_gelu": (keras.layers.Dense(6, activation="gelu"), (2, 3, 4)),
        "into_heads": (keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 3, 2), bias_axes="de"), (2, 3, 4)),
        "out_of_heads": (
            keras.layers.EinsumDense("abcd,cde->abe", output_shape=(None, 5), bias_axes="e"), (2, 3, 3, 2)
        ),
        "heads_first": (keras.layers.EinsumDense("btd,ndh->btnh", output_shape=(None, 3, 2)), (2, 3, 4)),
        "part_bias": (keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 3, 2), bias_axes="e"), (2, 3, 4)),
    }
    layer, shape = layers[kind]
    layer.build((None, *shape[1:]))
    rng = np.random.default_rng(3)
    for w in layer.weights:
        w.assign(rng.normal(0.0, 0.7, w.shape).astype("float32"))
    return layer, rng.normal(size=shape).astype("float32")


@pytest.mark.parametrize("kind", ["dense_gelu", "into_heads", "out_of_heads", "heads_first", "part_bias"])
def test_a_wrapped_projection_computes_what_the_layer_computes(kind):
    """`apply_linear` runs plain projections as one 2-D product (others as
    they are); the adjustment goes in before the activation, on the linear
    part laid out as the layer's output."""
    from keras_adapters.methods.base import _linear_2d
    from keras_adapters.methods.base import apply_linear

    layer, x = _projection(kind)
    assert (_linear_2d(layer, x) is None) == (kind in ("heads_first", "part_bias"))  # the others take one product
    for adjust in (None, lambda y: y):
        same = np.asarray(apply_linear(layer, x, adjust))
        np.testing.assert_allclose(same, np.asarray(layer(x)), rtol=1e-5, atol=1e-5)
    shifted = np.asarray(apply_linear(layer, x, lambda y: 2.0 * y + 1.0))
    if kind == "dense_gelu":
        linear = x.astype(np.float64) @ layer.kernel.numpy() + layer.bias.numpy()
        want = np.asarray(keras.activations.gelu(2.0 * linear + 1.0))
    else:
        want = 2.0 * np.asarray(layer(x)) + 1.0
    np.testing.assert_allclose(shifted, want, rtol=1e-5, atol=1e-5)


def test_in_mixed_precision_a_wrapped_projection_computes_in_its_compute_dtype():
    from keras_adapters.methods.base import apply_linear

    layer = keras.layers.Dense(6, dtype="mixed_bfloat16")
    layer.build((None, 3, 4))
    x = np.random.default_rng(4).normal(size=(2, 3, 4)).astype("float32")
    got = apply_linear(layer, x, lambda y: y)
    assert got.dtype == "bfloat16"
    np.testing.assert_allclose(np.asarray(got, "float32"), np.asarray(layer(x), "float32"), rtol=2e-2, atol=2e-2)


def test_a_quantized_projection_is_computed_by_its_own_call():
    """An int8 kernel needs its scales: the 2-D product must not read it raw."""
    from keras_adapters.methods.base import apply_linear

    layer = keras.layers.Dense(6, activation="gelu")
    layer.build((None, 3, 4))
    layer.quantize("int8")
    x = np.random.default_rng(6).normal(size=(2, 3, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(apply_linear(layer, x, None)), np.asarray(layer(x)), rtol=1e-5, atol=1e-5)
