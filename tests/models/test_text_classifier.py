"""AdapterTextClassifier on a tiny preset: fit, inputs, heads, saving."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import LABELS
from conftest import TEXTS
from conftest import VOCAB
from conftest import randomize_adapter_weights

import keras_adapters as ka
from keras_adapters.core import injection
from keras_adapters.core.injection import adapter_weights


def _model(preset, method="houlsby", **kwargs):
    kwargs.setdefault("num_classes", 4)
    kwargs.setdefault("sequence_length", 16)
    return ka.AdapterTextClassifier.from_preset(preset, method=method, **kwargs)


def _snapshot(weights):
    return {w.path: w.numpy().copy() for w in weights}


def test_fit_on_strings_trains_only_what_the_method_trains(tiny_preset):
    keras.utils.set_random_seed(0)
    # Bottleneck 4 (not 16 // 16 = 1), so no adapter is a single dead ReLU.
    model = _model(tiny_preset, ka.HoulsbyConfig(bottleneck_size=4))
    trainable_ids = {id(w) for w in model.trainable_weights}
    before_trainable = _snapshot(model.trainable_weights)
    before_frozen = _snapshot([w for w in model.weights if id(w) not in trainable_ids])
    model.fit(TEXTS, LABELS, epochs=2, batch_size=4, verbose=0)
    after = _snapshot(model.weights)
    changed = {p for p, v in before_trainable.items() if not np.array_equal(v, after[p])}
    assert changed == set(before_trainable)  # adapters, head and layer norms all moved
    assert any("layer_norm" in p for p in changed) and "default_head/logits/kernel" in changed
    for path, value in before_frozen.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)


def test_model_backbone_is_the_adapted_backbone(tiny_preset):
    model = _model(tiny_preset, "lora")
    assert isinstance(model.backbone, keras.Model)
    assert len(adapter_weights(model.backbone)) == 2 * 6 * 2  # A and B, 6 projections, 2 layers


def test_predict_takes_strings_and_token_inputs_alike(tiny_preset):
    model = _model(tiny_preset, "ia3")
    from_text = model.predict(TEXTS[:3], verbose=0)
    tokens = model.preprocessor(TEXTS[:3])
    from_tokens = model.predict(dict(tokens), verbose=0)
    np.testing.assert_allclose(from_text, from_tokens, atol=1e-6)
    # segment_ids and padding_mask may be left out.
    only_ids = model.predict({"token_ids": np.asarray(tokens["token_ids"])}, verbose=0)
    np.testing.assert_allclose(only_ids, from_text, atol=1e-6)
    assert from_text.shape == (3, 4)
    np.testing.assert_allclose(from_text.sum(axis=1), 1.0, atol=1e-5)


def test_multi_label_was_removed_with_a_reason(tiny_preset):
    with pytest.raises(ValueError, match="multi_label heads were removed in keras-adapters 0.4"):
        _model(tiny_preset, "lora", num_classes=3, multi_label=True)
    with pytest.raises(ValueError, match="multi_label heads were removed"):
        ka.ClassificationHead(3, multi_label=True)


def test_a_saved_multi_label_adapter_is_refused_with_the_reason(tiny_preset, tmp_path):
    model = _model(tiny_preset, "lora")
    model.save_adapter(str(tmp_path / "a"))
    path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["task"]["multi_label"] = True  # what a 0.3 multi-label adapter folder holds
    path.write_text(json.dumps(config))
    with pytest.raises(ka.AdapterFormatError, match=r"/a: multi_label heads were removed"):
        ka.AdapterTextClassifier.from_adapter(str(tmp_path / "a"))
    config["task"]["multi_label"] = False
    path.write_text(json.dumps(config))
    assert ka.AdapterTextClassifier.from_adapter(str(tmp_path / "a")).adapter_names == ["default"]


@pytest.mark.parametrize(
    "labels, message",
    [
        ([0, 1, 2, 3, 0, 1, 2, 7], r"y\[7\] = 7 is outside \[0, 4\)"),
        ([0, 1, 1.5, 3, 0, 1, 2, 3], r"y\[2\] = 1.5 is not a whole number"),
        ([0, -1, 2, 3, 0, 1, 2, 3], r"y\[1\] = -1 is outside"),
        (["a", "b", "a", "b", "a", "b", "a", "b"], "labels are class indices 0..3"),
    ],
)
def test_labels_that_are_not_class_indices_are_refused_before_training(tiny_preset, labels, message):
    model = _model(tiny_preset, "lora")
    before = [w.numpy() for w in model.trainable_weights]
    with pytest.raises(ValueError, match=message):
        model.fit(TEXTS, labels, epochs=1, batch_size=4, verbose=0)
    with pytest.raises(ValueError, match=message.replace("y\\[", "validation_data\\[")):
        model.fit(TEXTS, LABELS, validation_data=(TEXTS, labels), epochs=1, batch_size=4, verbose=0)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))


def test_mean_pooling_is_the_mean_of_the_unpadded_tokens(tiny_preset):
    model = _model(tiny_preset, "head", pooling="mean")
    tokens = {k: np.array(v) for k, v in model.preprocessor(TEXTS[:2]).items()}
    assert (tokens["padding_mask"] == 0).any()
    # float64 reference from the untouched backbone's token vectors.
    sequence = model.backbone(tokens, training=False)["sequence_output"].numpy().astype("float64")
    mask = tokens["padding_mask"][..., None].astype("float64")
    mean = (sequence * mask).sum(axis=1) / mask.sum(axis=1)
    kernel, bias = (w.numpy().astype("float64") for w in model.heads["default"].logits.weights)
    logits = mean @ kernel + bias
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(tokens, verbose=0), expected, atol=1e-6)
    # What sits under padding does not move it.
    tokens["token_ids"][tokens["padding_mask"] == 0] = 7
    np.testing.assert_allclose(model.predict(tokens, verbose=0), expected, atol=1e-6)


@pytest.mark.slow  # ~21 s: keeps the default run under 15 minutes (CI runs it with -m slow)
def test_keras_save_and_load_model_round_trip(tiny_preset, tmp_path):
    keras.utils.set_random_seed(2)
    model = _model(tiny_preset, "lora", class_names=["sport", "business", "tech", "politics"])
    model.fit(TEXTS, LABELS, epochs=1, batch_size=4, verbose=0)
    expected = model.predict(TEXTS, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ka.AdapterTextClassifier)
    assert loaded.adapter_config() == model.adapter_config()
    assert loaded.class_names == ["sport", "business", "tech", "politics"]
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0), expected, atol=1e-6)
    assert len(loaded.trainable_weights) == len(model.trainable_weights)
    # Training can go on from the loaded model, optimizer state included.
    assert loaded.optimizer.iterations.numpy() == model.optimizer.iterations.numpy()
    loaded.fit(TEXTS, LABELS, epochs=1, batch_size=4, verbose=0)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merge_adapter_keeps_predictions(tiny_preset, method, tmp_path):
    keras.utils.set_random_seed(3)
    model = _model(tiny_preset, method)
    model.fit(TEXTS, LABELS, epochs=3, batch_size=4, verbose=0)
    unmerged = model.predict(TEXTS, verbose=0)
    model.merge_adapter()
    assert model.adapter_config().method == "head" and model.merged_adapter["method"] == method
    assert ka.parameter_report(model)["groups"]["adapter"]["total"] == 0
    merged = model.predict(TEXTS, verbose=0)
    np.testing.assert_allclose(merged, unmerged, atol=1e-4)
    model.save(str(tmp_path / "merged.keras"))
    loaded = keras.models.load_model(str(tmp_path / "merged.keras"))
    np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0), merged, atol=1e-6)
    with pytest.raises(ka.AdapterFormatError, match="was merged into the backbone"):
        model.save_adapter(str(tmp_path / "adapter"))


def test_parameter_report_counts_groups(tiny_preset):
    model = _model(tiny_preset, "houlsby")
    report = ka.parameter_report(model)
    groups = report["groups"]
    assert report["total"] == sum(g["total"] for g in groups.values()) == model.count_params()
    assert report["trainable"] == sum(g["trainable"] for g in groups.values())
    # hidden 16 // 16 = bottleneck 1: per adapter 16*1+1 + 1*16+16 = 49,
    # plus the adapter's own copies of 2 layer norms (16 gamma + 16 beta).
    assert groups["adapter"]["total"] == groups["adapter"]["trainable"] == 2 * 2 * (49 + 32)
    assert groups["backbone_trainable"]["total"] == 0
    assert groups["head"]["trainable"] == 16 * 4 + 4
    assert groups["backbone_frozen"]["trainable"] == 0
    assert report["trainable_fraction"] == pytest.approx(report["trainable"] / report["total"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 1}, "num_classes must be an integer >= 2, got 1"),
        ({"num_classes": 2.5}, "num_classes must be an integer >= 2, got 2.5"),
        ({"class_names": ["a", "b"]}, "class_names must be 4 distinct names"),
        ({"pooling": "max"}, "pooling must be one of"),
        ({"method": "reft"}, "Unknown adapter method 'reft'"),
        ({"adapter": "reft"}, "Unknown adapter method 'reft'"),  # the old spelling
    ],
)
def test_bad_arguments_get_clear_errors(tiny_preset, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _model(tiny_preset, **kwargs)


def test_default_learning_rates_follow_the_method(tiny_preset):
    lrs = {}
    for method in ("houlsby", "lora", "full"):
        model = _model(tiny_preset, method)
        lrs[method] = float(model.optimizer.learning_rate.numpy())
    assert lrs["full"] == pytest.approx(3e-5)
    assert lrs["houlsby"] == pytest.approx(1e-3) and lrs["lora"] == pytest.approx(1e-3)


# ----------------------------------------------------------- named adapters
def _weights(model):
    return {id(w): (w.path, w.numpy().copy()) for w in model.weights}


def test_from_preset_names_its_adapter_default(tiny_preset):
    model = _model(tiny_preset, "lora")
    assert model.adapter_names == ["default"] and model.active_adapters == "default"
    model.add_adapter("spam", "houlsby", num_classes=2, class_names=["ham", "spam"])
    assert model.adapter_names == ["default", "spam"]
    assert model.active_adapters == "default" and model.num_classes == 4
    model.set_active_adapters("spam")
    assert model.num_classes == 2 and model.class_names == ["ham", "spam"]
    assert model.predict(TEXTS, verbose=0).shape == (8, 2)
    with pytest.raises(ValueError, match="No adapter named 'nope'"):
        model.set_active_adapters("nope")
    model.delete_adapter("spam")
    assert model.adapter_names == ["default"] and "spam" not in model.heads


def test_train_adapter_moves_its_weights_and_head_only(tiny_preset):
    keras.utils.set_random_seed(0)
    model = _model(tiny_preset, ka.HoulsbyConfig(bottleneck_size=4))
    model.add_adapter("b", ka.HoulsbyConfig(bottleneck_size=4), num_classes=2)
    model.add_adapter("c", "lora")
    model.train_adapter("b")
    model.compile()
    mine = {id(w) for w in injection.adapter_weights_by_key(model.backbone, "b").values()}
    mine |= {id(w) for w in model.heads["b"].weights}
    assert {id(w) for w in model.trainable_weights} == mine
    before = _weights(model)
    model.fit(TEXTS, LABELS % 2, epochs=2, batch_size=4, verbose=0)
    for w in model.weights:
        path, value = before[id(w)]
        if id(w) in mine:
            assert not np.array_equal(w.numpy(), value), path
        else:
            np.testing.assert_array_equal(w.numpy(), value, err_msg=path)


def test_parallel_returns_every_head_and_matches_each_adapter(tiny_preset):
    keras.utils.set_random_seed(1)
    model = _model(tiny_preset, "houlsby")
    model.add_adapter("spam", "lora", num_classes=2)
    randomize_adapter_weights(model.backbone)
    alone = {}
    for name in ("default", "spam"):
        model.set_active_adapters(name)
        alone[name] = model.predict(TEXTS, verbose=0)
    model.set_active_adapters(ka.Parallel("default", "spam"))
    both = model.predict(TEXTS, verbose=0)
    assert sorted(both) == ["default", "spam"]
    for name in both:
        np.testing.assert_allclose(both[name], alone[name], atol=1e-5)
    with pytest.raises(ValueError, match="fit\\(\\) trains one output"):
        model.fit(TEXTS, LABELS, epochs=1, verbose=0)


def test_average_with_all_weight_on_one_is_that_adapter(tiny_preset):
    model = _model(tiny_preset, "lora")
    model.add_adapter("b", "lora")
    randomize_adapter_weights(model.backbone)
    model.set_active_adapters("default")
    alone = model.predict(TEXTS, verbose=0)
    model.set_active_adapters(ka.Average("default", "b", weights=[1, 0]))
    np.testing.assert_allclose(model.predict(TEXTS, verbose=0), alone, atol=1e-6)
    model.set_active_adapters(ka.Average("default", "b"))
    assert np.abs(model.predict(TEXTS, verbose=0) - alone).max() > 1e-4


def test_save_and_load_by_name(tiny_preset, tmp_path):
    keras.utils.set_random_seed(2)
    model = _model(tiny_preset, "houlsby")
    model.add_adapter("spam", "ia3", num_classes=2, class_names=["ham", "spam"])
    randomize_adapter_weights(model.backbone)
    model.set_active_adapters("spam")
    expected = model.predict(TEXTS, verbose=0)
    model.save_adapter(str(tmp_path / "spam"), name="spam")
    other = _model(tiny_preset, "lora")
    assert other.load_adapter(str(tmp_path / "spam")) == "spam"
    assert other.adapter_names == ["default", "spam"] and other.active_adapters == "default"
    other.set_active_adapters("spam")
    np.testing.assert_allclose(other.predict(TEXTS, verbose=0), expected, atol=1e-6)
    assert other.load_adapter(str(tmp_path / "spam"), name="spam2") == "spam2"
    with pytest.raises(ValueError, match="already an adapter"):
        other.load_adapter(str(tmp_path / "spam"))


def test_release_0_1_adapter_folders_still_load():
    """Folders written by keras-adapters 0.1 (tests/data), with their outputs then."""
    data = os.path.join(os.path.dirname(__file__), "..", "data", "release_0_1_adapters")
    for method in ("houlsby", "lora", "ia3"):
        model = ka.AdapterTextClassifier.from_adapter(
            os.path.join(data, method), preset=os.path.join(data, "tiny_preset")
        )
        assert model.adapter_names == ["default"] and model.adapter_config().method == method
        expected = np.load(os.path.join(data, f"{method}_probs.npy"))
        np.testing.assert_allclose(model.predict(TEXTS, verbose=0), expected, atol=1e-6)


def test_unknown_fields_from_a_newer_release_load_with_a_warning(tiny_preset, tmp_path):
    model = _model(tiny_preset, "lora")
    folder = tmp_path / "a"
    model.save_adapter(str(folder))
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["comments"] = "from the future"
    config["method"]["use_qalora"] = True
    path.write_text(json.dumps(config))
    with pytest.warns(UserWarning) as caught:
        again = ka.AdapterTextClassifier.from_adapter(str(folder))
    messages = " ".join(str(w.message) for w in caught)
    assert "['comments']" in messages and "['use_qalora']" in messages
    np.testing.assert_allclose(again.predict(TEXTS, verbose=0), model.predict(TEXTS, verbose=0), atol=1e-6)


@pytest.mark.slow  # moved to keep the default suite under 15 min; CI runs it
def test_keras_round_trip_keeps_every_adapter_fusion_and_head(tiny_preset, tmp_path):
    keras.utils.set_random_seed(3)
    model = _model(tiny_preset, "houlsby")
    model.add_adapter("p", "pfeiffer", num_classes=2)
    model.add_adapter("l", "lora", num_classes=3)
    model.add_adapter_fusion(ka.Fuse("default", "p"), num_classes=4)
    randomize_adapter_weights(model.backbone)
    model.train_adapter_fusion("default_p_fusion")
    model.compile()
    model.fit(TEXTS, LABELS, epochs=1, batch_size=4, verbose=0)
    expected = {}
    for spec in ("default", "p", "l", ka.Fuse("default", "p")):
        model.set_active_adapters(spec)
        expected[repr(spec)] = model.predict(TEXTS, verbose=0)
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert loaded.adapter_names == ["default", "p", "l"]
    assert loaded.fusion_names == ["default_p_fusion"]
    assert loaded.active_adapters == ka.Fuse("default", "p")
    assert [w.path for w in loaded.trainable_weights] == [w.path for w in model.trainable_weights]
    for spec in ("default", "p", "l", ka.Fuse("default", "p")):
        loaded.set_active_adapters(spec)
        np.testing.assert_allclose(loaded.predict(TEXTS, verbose=0), expected[repr(spec)], atol=1e-6)


def test_merge_is_refused_while_other_adapters_share_the_backbone(tiny_preset):
    model = _model(tiny_preset, "lora")
    model.add_adapter("other", "ia3")
    with pytest.raises(ValueError, match="delete them first"):
        model.merge_adapter()
    model.delete_adapter("other")
    model.merge_adapter()
    with pytest.raises(ValueError, match="merged into its weights"):
        model.add_adapter("late", "lora")


def test_deleting_an_adapter_leaves_the_trained_one_training(tiny_preset):
    model = _model(tiny_preset, "lora")
    model.add_adapter("other", "ia3")
    trainable = [w.path for w in model.trainable_weights]
    model.delete_adapter("other")
    assert [w.path for w in model.trainable_weights] == trainable and trainable


def _mixed_methods_model(tiny_preset):
    """Six adapters of every routable kind, differing in everything that is
    padded or grouped per row: ranks, bottleneck sizes, activations, target
    layers and modules, class counts, pooling."""
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, method=None, sequence_length=16)
    model.add_adapter("houlsby", "houlsby", num_classes=3)
    pfeiffer = ka.PfeifferConfig(bottleneck_size=5, activation="gelu")
    model.add_adapter("pfeiffer", pfeiffer, num_classes=4, pooling="mean")
    lora = ka.LoRAConfig(rank=4, target_modules=("query", "value", "feedforward_intermediate_dense"))
    model.add_adapter("lora", lora, num_classes=2)
    model.add_adapter("lora_top", ka.LoRAConfig(rank=2, alpha=3, target_layers="transformer_layer_1"), num_classes=5)
    model.add_adapter("ia3", "ia3", num_classes=3)
    model.add_adapter("head", "head", num_classes=2)
    dora = ka.LoRAConfig(rank=3, use_dora=True, target_modules=("value", "feedforward_intermediate_dense"))
    model.add_adapter("dora", dora, num_classes=3)
    model.add_adapter("bitfit", ka.BitFitConfig(target_modules=("key", "feedforward_intermediate_dense",
                                                                 "feedforward_layer_norm")), num_classes=4)
    model.add_adapter("parallel", ka.ParallelAdapterConfig(bottleneck_size=3, scaling="learned"), num_classes=4)
    model.add_adapter("compacter", ka.CompacterConfig(bottleneck_size=8, phm_dim=2, activation="relu"), num_classes=3)
    randomize_adapter_weights(model.backbone, scale=0.3)
    rng = np.random.default_rng(0)
    for head in model.heads.values():
        head.logits.kernel.assign(rng.standard_normal(head.logits.kernel.shape))
        # [CLS] pooling on the tiny random backbone is near zero: biases tell the heads apart there.
        head.logits.bias.assign(rng.standard_normal(head.logits.bias.shape))
    return model


def test_route_gives_each_row_its_own_adapter(tiny_preset):
    model = _mixed_methods_model(tiny_preset)
    names = model.adapter_names
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS + TEXTS[:4]).items()}
    rows = [names[i % len(names)] for i in range(12)][::-1]
    alone = {}
    for name in names:
        model.set_active_adapters(name)
        alone[name] = model.predict(tokens, verbose=0)
    route = ka.Route(*names)
    model.set_active_adapters(route)
    routed = model.predict({**tokens, "adapter_id": route.ids(rows)}, verbose=0)
    assert routed.shape == (12, 5)
    for i, name in enumerate(rows):
        k = alone[name].shape[1]
        np.testing.assert_allclose(routed[i, :k], alone[name][i], atol=1e-6)
        assert np.all(routed[i, k:] == 0)
        # Any other adapter's answer would be told apart.
        others = [alone[n][i] for n in names if n != name and alone[n].shape[1] == k]
        assert all(np.abs(o - alone[name][i]).max() > 1e-3 for o in others)


def test_route_serves_and_does_not_train(tiny_preset):
    model = _mixed_methods_model(tiny_preset)
    model.set_active_adapters(ka.Route("lora", "ia3"))
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS).items()}
    with pytest.raises(ValueError, match="inputs need 'adapter_id'"):
        model.predict(tokens, verbose=0)
    with pytest.raises(ValueError, match="activate one adapter"):
        model.fit({**tokens, "adapter_id": np.zeros(8, "int32")}, LABELS % 2, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="No adapter named 'nope'"):
        model.set_active_adapters(ka.Route("lora", "nope"))


def test_prompt_from_text_starts_as_those_tokens_embedding_output(tiny_preset):
    config = ka.PromptConfig(num_virtual_tokens=5, init="text", init_text="the news today")
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=4, method=config, sequence_length=16)
    ids = [VOCAB.index(w) for w in ("the", "news", "today")]
    assert model.adapter_config().init_token_ids == tuple(ids + ids[:2])  # repeated to fill
    b = model.backbone
    w = {name: getattr(b, name).weights for name in ("token_embedding", "position_embedding", "segment_embedding")}
    gamma, beta = (v.numpy().astype("f8") for v in b.embeddings_layer_norm.weights)
    raw = w["token_embedding"][0].numpy()[ids + ids[:2]] + w["position_embedding"][0].numpy()[1]
    raw = (raw + w["segment_embedding"][0].numpy()[0]).astype("f8")
    normed = (raw - raw.mean(-1, keepdims=True)) / np.sqrt(raw.var(-1, keepdims=True) + 1e-12) * gamma + beta
    np.testing.assert_allclose(model.trainable_weights[0].numpy(), normed, atol=1e-5)
    assert model.trainable_weights[0].path == "embeddings/default/prompt/prompt"


@pytest.mark.parametrize("pooling", [pytest.param("cls", marks=pytest.mark.slow), "mean"])
def test_prompt_leaves_padding_out(tiny_preset, pooling):
    keras.utils.set_random_seed(4)
    model = ka.AdapterTextClassifier.from_preset(
        tiny_preset, num_classes=4, method=ka.PromptConfig(num_virtual_tokens=4), sequence_length=16, pooling=pooling
    )
    model.fit(TEXTS, LABELS, epochs=2, batch_size=4, verbose=0)
    head = model.heads["default"].logits.kernel
    head.assign(np.random.default_rng(0).standard_normal(head.shape) * 5)  # outputs far from uniform
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS).items()}
    assert tokens["padding_mask"][:, 8:].sum() == 0  # every text fits in 8 tokens
    short = {k: v[:, :8] for k, v in tokens.items()}
    noisy = {**tokens, "token_ids": np.where(tokens["padding_mask"], tokens["token_ids"], 7)}
    expected = model.predict(tokens, verbose=0)
    np.testing.assert_allclose(model.predict(short, verbose=0), expected, atol=1e-6)
    np.testing.assert_allclose(model.predict(noisy, verbose=0), expected, atol=1e-6)
    unit = model.trainable_weights[0]
    # The prompt is read: moving it moves the predictions (a random move: a constant
    # shift of every value is mostly taken out by the layer norms).
    unit.assign(unit.numpy() + np.random.default_rng(1).standard_normal(unit.shape).astype("float32"))
    # (by far more than the 1e-6 allowed above; small, as the tiny random model's attention is flat)
    assert np.abs(model.predict(tokens, verbose=0) - expected).max() > 3e-5


# ------------------------------------------------------------- text pairs
PAIRS_A = ["the team won", "stocks fell", "new phone", "the vote"]
PAIRS_B = ["a goal", "bank profit", "chip released", "minister"]


def _pair_model(preset, **kwargs):
    model = _model(preset, task="pair_classification", num_classes=2, pooling="mean", **kwargs)
    randomize_adapter_weights(model.backbone, scale=0.5)
    kernel = model.heads["default"].logits.kernel  # away from ~0, so outputs differ by input
    kernel.assign(np.random.default_rng(0).normal(size=kernel.shape).astype("float32"))
    return model


def test_pairs_are_read_as_one_sequence_with_segment_ids(tiny_preset):
    model = _pair_model(tiny_preset)
    token_ids = np.zeros((4, 16), "int32")
    segment_ids = np.zeros((4, 16), "int32")
    for i, (a, b) in enumerate(zip(PAIRS_A, PAIRS_B)):
        ids_a, ids_b = (list(np.asarray(model.preprocessor.tokenizer(t))) for t in (a, b))
        row = [2, *ids_a, 3, *ids_b, 3]  # [CLS] a [SEP] b [SEP]
        token_ids[i, : len(row)] = row
        segment_ids[i, len(ids_a) + 2 : len(row)] = 1
    reference = model.predict({"token_ids": token_ids, "segment_ids": segment_ids}, verbose=0)
    np.testing.assert_allclose(model.predict((PAIRS_A, PAIRS_B), verbose=0), reference, atol=1e-6)
    # text_b reaches the model: another second text gives other probabilities.
    other = model.predict((PAIRS_A, PAIRS_B[::-1]), verbose=0)
    assert np.abs(other - reference).max() > 1e-3


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_pair_adapters_fit_evaluate_and_round_trip(tiny_preset, tmp_path):
    model = _pair_model(tiny_preset)
    labels = np.array([0, 1, 0, 1])
    model.compile()
    model.fit((PAIRS_A, PAIRS_B), labels, epochs=1, verbose=0, validation_data=((PAIRS_A, PAIRS_B), labels))
    assert set(model.evaluate((PAIRS_A, PAIRS_B), labels, verbose=0, return_dict=True)) >= {"accuracy", "loss"}
    expected = model.predict((PAIRS_A, PAIRS_B), verbose=0)
    model.save_adapter(tmp_path / "adapter")
    task = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["task"]
    assert task["type"] == "pair_classification" and "task" not in task
    again = ka.AdapterTextClassifier.from_adapter(tmp_path / "adapter")
    assert again.task == "pair_classification"
    np.testing.assert_allclose(again.predict((PAIRS_A, PAIRS_B), verbose=0), expected, atol=1e-6)


def test_pairs_and_single_texts_are_not_mixed_up(tiny_preset):
    pair = _pair_model(tiny_preset)
    with pytest.raises(ValueError, match=r"classifies text pairs: pass a tuple \(texts_a, texts_b\)"):
        pair.predict(PAIRS_A, verbose=0)
    with pytest.raises(ValueError, match="classifies text pairs"):
        pair.fit(PAIRS_A, [0, 1, 0, 1], verbose=0)
    single = _model(tiny_preset)
    with pytest.raises(ValueError, match="classifies single texts, but got a tuple of 2.*pair_classification"):
        single.predict((PAIRS_A, PAIRS_B), verbose=0)
    with pytest.raises(ValueError, match="Unknown task 'pairs'"):
        _model(tiny_preset, task="pairs")
    with pytest.raises(ValueError, match="classifies texts or text pairs, not 'question_answering'"):
        ka.ClassificationHead(2, task="question-answering")


def test_a_model_holds_pair_and_single_text_adapters(tiny_preset):
    model = _model(tiny_preset)
    model.add_adapter("nli", "lora", num_classes=3, task="pair_classification")
    model.add_adapter("topic2", "lora")  # follows the first head: single texts
    assert [model.heads[n].task for n in model.adapter_names] == [
        "text_classification", "pair_classification", "text_classification"]
    model.set_active_adapters("nli")
    assert model.predict((PAIRS_A, PAIRS_B), verbose=0).shape == (4, 3)
    model.set_active_adapters("topic2")
    assert model.predict(PAIRS_A, verbose=0).shape == (4, 4)


def test_a_folder_of_another_task_is_refused(tiny_preset, tmp_path):
    model = _model(tiny_preset)
    model.save_adapter(tmp_path / "a")
    path = tmp_path / "a" / "adapter_config.json"
    config = json.loads(path.read_text())
    config["task"]["type"] = "summarization"  # a task of some later release
    path.write_text(json.dumps(config))
    with pytest.raises(ka.AdapterFormatError, match="its head does 'summarization'.*upgrade"):
        _model(tiny_preset, method=None).load_adapter(tmp_path / "a")
