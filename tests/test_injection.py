"""The shared insertion mechanism, on a tiny random BERT."""

import keras
import numpy as np
import pytest
from conftest import randomize_adapter_weights
from conftest import tiny_backbone
from conftest import token_batch

import keras_adapters as ka
from keras_adapters.injection import SITES
from keras_adapters.injection import adapter_weights
from keras_adapters.injection import get_injection
from keras_adapters.methods.base import WrappedLayer
from keras_adapters.methods.registry import METHODS

EXPECTED_SITES = {
    "houlsby": ("self_attention_dropout", "feedforward_dropout"),
    "pfeiffer": ("feedforward_dropout",),
    "lora": ("query", "value"),
    "ia3": ("key", "value", "feedforward_output_dense"),
    "full": (),
    "head": (),
}


def _sequence_output(backbone, x):
    return backbone(x, training=False)["sequence_output"].numpy()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_injected_backbone_starts_as_the_original(method):
    x = token_batch()
    reference = _sequence_output(tiny_backbone(), x)
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, method)
    np.testing.assert_allclose(_sequence_output(backbone, x), reference, atol=1e-6)


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "lora", "ia3"])
def test_adapters_sit_at_their_sites_and_change_the_output(method):
    x = token_batch()
    backbone = tiny_backbone()
    reference = _sequence_output(backbone, x)
    injection = ka.inject_adapters(backbone, method)
    expected = {
        f"transformer_layer_{i}/{site}" for i in range(2) for site in EXPECTED_SITES[method]
    }
    assert set(injection.wrappers) == expected
    for path, wrapper in injection.wrappers.items():
        encoder, site = path.split("/", 1)
        parent = backbone.get_layer(encoder)
        *parents, attr = SITES[site]
        for name in parents:
            parent = getattr(parent, name)
        assert getattr(parent, attr) is wrapper
        # Tracked in place of the original, exactly once.
        assert wrapper in parent._layers and wrapper.base not in parent._layers
    randomize_adapter_weights(backbone)
    assert np.abs(_sequence_output(backbone, x) - reference).max() > 1e-3


def test_trainable_weights_are_exactly_what_the_method_trains():
    backbone = tiny_backbone()
    originals = {id(w) for w in backbone.weights}
    ka.inject_adapters(backbone, "houlsby")
    trainable = backbone.trainable_weights
    norms = [w for w in trainable if id(w) in originals]
    assert sorted(w.path for w in norms) == sorted(
        f"transformer_layer_{i}/{n}_layer_norm/{p}"
        for i in range(2)
        for n in ("self_attention", "feedforward")
        for p in ("gamma", "beta")
    )
    added = [w for w in trainable if id(w) not in originals]
    assert {id(w) for w in added} == {id(w) for w in adapter_weights(backbone)}
    assert len(added) == 2 * 2 * 4  # 2 layers x 2 adapters x (down, up) x (kernel, bias)
    # No weight counted twice.
    assert len({id(w) for w in backbone.weights}) == len(backbone.weights)


def test_full_trains_everything_head_nothing():
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "full")
    assert len(backbone.trainable_weights) == len(backbone.weights)
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "head")
    assert backbone.trainable_weights == []


def test_target_layers_restricts_injection():
    backbone = tiny_backbone()
    injection = ka.inject_adapters(
        backbone, ka.LoRAConfig(target_layers="transformer_layer_1", target_modules=("key",))
    )
    assert list(injection.wrappers) == ["transformer_layer_1/key"]
    with pytest.raises(ValueError, match="matches none of the encoder layers"):
        ka.inject_adapters(tiny_backbone(), ka.LoRAConfig(target_layers="layer_9"))


def test_second_injection_is_refused():
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "lora")
    with pytest.raises(ValueError, match="already has a 'lora' adapter"):
        ka.inject_adapters(backbone, "ia3")


def test_missing_site_fails_before_changing_anything():
    backbone = tiny_backbone()
    encoder = backbone.get_layer("transformer_layer_1")
    # Simulate a keras-hub release that renamed a sublayer.
    object.__setattr__(encoder, "_feedforward_dropout", None)
    trainable_before = [w.trainable for w in backbone.weights]
    with pytest.raises(RuntimeError, match="lays out TransformerEncoder differently"):
        ka.inject_adapters(backbone, "houlsby")
    assert get_injection(backbone) is None
    assert [w.trainable for w in backbone.weights] == trainable_before
    first = backbone.get_layer("transformer_layer_0")
    assert not isinstance(first._self_attention_dropout, WrappedLayer)


def test_non_transformer_backbone_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="no keras_hub TransformerEncoder"):
        ka.inject_adapters(model, "lora")


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merge_keeps_outputs_and_removes_wrappers(method):
    x = token_batch()
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, method)
    randomize_adapter_weights(backbone)
    adapted = _sequence_output(backbone, x)
    ka.merge_adapters(backbone)
    assert get_injection(backbone) is None
    assert not any(isinstance(layer, WrappedLayer) for layer in backbone._flatten_layers())
    assert len(backbone.weights) == len(tiny_backbone().weights)
    np.testing.assert_allclose(_sequence_output(backbone, x), adapted, atol=1e-4)


def test_bottleneck_merge_is_refused_without_changes():
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "houlsby")
    with pytest.raises(ValueError, match="cannot be merged"):
        ka.merge_adapters(backbone)
    assert get_injection(backbone) is not None


def test_adapter_weights_stay_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_bfloat16")
    backbone = tiny_backbone()
    ka.inject_adapters(backbone, "houlsby")
    x = token_batch()
    out = backbone(x)["sequence_output"]
    assert out.dtype == "bfloat16"
    weights = adapter_weights(backbone)
    assert weights and all(w.dtype == "float32" for w in weights)
