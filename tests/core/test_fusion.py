"""AdapterFusion: the fusion layer, training only the fusion, saving it."""

import keras
import numpy as np
import pytest
from conftest import LABELS
from conftest import TEXTS
from conftest import randomize_adapter_weights
from conftest import token_batch

import keras_adapters as ka
from keras_adapters.core import fusion
from keras_adapters.core import injection


def _fused(preset):
    keras.utils.set_random_seed(0)
    model = ka.AdapterTextClassifier.from_preset(preset, num_classes=4, method="houlsby", sequence_length=16)
    model.add_adapter("p", "pfeiffer", num_classes=2)
    model.add_adapter("q", "houlsby", num_classes=3)
    randomize_adapter_weights(model.backbone, scale=0.3)
    model.add_adapter_fusion(ka.Fuse("default", "p", "q"), num_classes=4)
    return model


def _sequence(model, spec):
    model.set_active_adapters(spec)
    return model.backbone(token_batch(vocabulary_size=30))["sequence_output"].numpy()


def test_fusion_layer_is_attention_over_residuals():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 3, 8)).astype("float32")
    residuals = rng.standard_normal((2, 3, 4, 8)).astype("float32")
    layer = fusion.FusionLayer(attention_dropout=0.0)
    out = layer(y, residuals).numpy()
    wq, bq = (v.numpy() for v in layer.query.weights)
    wk, bk = (v.numpy() for v in layer.key.weights)
    wv = layer.value.kernel.numpy()
    scores = np.einsum("bth,btnh->btn", y @ wq + bq, residuals @ wk + bk)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = y + np.einsum("btn,btnh->bth", probs, residuals @ wv)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    np.testing.assert_array_equal(wv, np.eye(8, dtype="float32"))


def test_a_fusion_with_flat_attention_is_the_average_of_its_adapters(tiny_preset):
    # Both Houlsby: at every site both adapters act (a Pfeiffer member would
    # be absent from the attention sites, where Average counts it as identity).
    model = _fused(tiny_preset)
    fuse = model.add_adapter_fusion(ka.Fuse("default", "q"))
    for w in injection.fusion_weights_by_key(model.backbone, fuse.name).values():
        if "query" in w.path:
            w.assign(np.zeros(w.shape, "float32"))
    average = _sequence(model, ka.Average("default", "q"))
    np.testing.assert_allclose(_sequence(model, fuse), average, atol=1e-5)
    # With attention that is not flat, fusion weighs the adapters differently.
    for w in injection.fusion_weights_by_key(model.backbone, fuse.name).values():
        if "query" in w.path:
            w.assign(np.random.default_rng(1).standard_normal(w.shape).astype("float32"))
    assert np.abs(_sequence(model, fuse) - average).max() > 1e-3


def test_train_adapter_fusion_moves_only_the_fusion_and_its_head(tiny_preset):
    model = _fused(tiny_preset)
    fuse = model.train_adapter_fusion("default_p_q_fusion")
    model.compile()
    mine = {id(w) for w in injection.fusion_weights_by_key(model.backbone, fuse.name).values()}
    mine |= {id(w) for w in model.heads[fuse.name].weights}
    assert {id(w) for w in model.trainable_weights} == mine
    before = {id(w): w.numpy().copy() for w in model.weights}
    model.fit(TEXTS, LABELS, epochs=2, batch_size=4, verbose=0)
    moved = {id(w) for w in model.weights if not np.array_equal(w.numpy(), before[id(w)])}
    assert moved == mine


def test_fusion_folder_holds_its_adapters(tiny_preset, tmp_path):
    model = _fused(tiny_preset)
    model.train_adapter_fusion("default_p_q_fusion")
    expected = model.predict(TEXTS, verbose=0)
    model.save_adapter(str(tmp_path / "fusion"))
    assert sorted(p.name for p in (tmp_path / "fusion" / "adapters").iterdir()) == ["default", "p", "q"]
    again = ka.AdapterTextClassifier.from_adapter(str(tmp_path / "fusion"))
    assert again.adapter_names == ["default", "p", "q"] and again.fusion_names == ["default_p_q_fusion"]
    np.testing.assert_allclose(again.predict(TEXTS, verbose=0), expected, atol=1e-6)


def test_fusion_over_lora_is_refused(tiny_preset):
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=4, method="houlsby", sequence_length=16)
    model.add_adapter("l", "lora")
    with pytest.raises(ValueError, match="combines bottleneck adapters"):
        model.add_adapter_fusion(ka.Fuse("default", "l"))
    with pytest.raises(ValueError, match="has not been added"):
        model.set_active_adapters(ka.Fuse("default", "l"))


def test_fusion_takes_compacter_adapters_and_refuses_parallel_ones(tiny_preset):
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=4, method="houlsby", sequence_length=16)
    model.add_adapter("c", ka.CompacterConfig(bottleneck_size=8, phm_dim=2))
    model.add_adapter("par", ka.ParallelAdapterConfig(bottleneck_size=4))
    randomize_adapter_weights(model.backbone, scale=0.3)
    fuse = model.add_adapter_fusion(ka.Fuse("default", "c"))
    for w in injection.fusion_weights_by_key(model.backbone, fuse.name).values():
        if "query" in w.path:
            w.assign(np.zeros(w.shape, "float32"))
    average = _sequence(model, ka.Average("default", "c"))
    assert np.abs(average - _sequence(model, "default")).max() > 1e-3  # the Compacter counts
    np.testing.assert_allclose(_sequence(model, fuse), average, atol=1e-5)
    with pytest.raises(ValueError, match="combines bottleneck adapters"):
        model.add_adapter_fusion(ka.Fuse("default", "par"))
