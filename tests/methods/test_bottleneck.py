"""Bottleneck placements (ours and AdapterHub's) against a float64 BERT on MiniLM."""

import keras
import numpy as np
import pytest
from bert_reference import Bottleneck
from bert_reference import NumpyBert
from conftest import randomize_adapter_weights

import keras_adapters as ka
from keras_adapters.backbones import bert
from keras_adapters.core import injection
from keras_adapters.io import presets

SENTENCES = ["The striker scored twice as the home side won the cup final.", "Shares fell 4%."]
NUMPY_ACTIVATIONS = {"relu": lambda t: np.maximum(t, 0), "silu": lambda t: t / (1 + np.exp(-t))}
CONFIGS = {
    "seq_bn": (lambda: ka.PfeifferConfig(original_ln_before=True), "normed", {"ffn": "feedforward_layer_norm"}),
    "double_seq_bn": (
        lambda: ka.HoulsbyConfig(activation="silu", train_layer_norms=False),
        "sequential",
        {"attention": "self_attention_dropout", "ffn": "feedforward_dropout"},
    ),
    "par_bn": (lambda: ka.ParallelAdapterConfig(scaling=4.0), "parallel", {"ffn": "feedforward_intermediate_dense"}),
    "pfeiffer": (lambda: ka.PfeifferConfig(), "sequential", {"ffn": "feedforward_dropout"}),
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_placements_match_a_float64_bert(minilm_preset, kind):
    make, placement, sites = CONFIGS[kind]
    config = make()
    keras.utils.set_random_seed(0)
    backbone = presets.load_backbone(minilm_preset)
    ka.inject_adapters(backbone, config)
    randomize_adapter_weights(backbone, scale=0.2)
    weights = {k: w.numpy() for k, w in injection.adapter_weights_by_key(backbone, "default").items()}
    assert not any("layer_norm/gamma" in k for k in weights)  # no trained layer-norm copies
    scale = getattr(config, "scaling", 1.0)
    reference_adapters = {
        (i, side): Bottleneck(
            *(weights[bert.unit_key(i, site, part)] for part in ("down/kernel", "down/bias", "up/kernel", "up/bias")),
            NUMPY_ACTIVATIONS[config.activation], placement, scale,
        )
        for i in range(6)
        for side, site in sites.items()
    }
    tokens = {k: np.asarray(v) for k, v in presets.load_preprocessor(minilm_preset, 24)(SENTENCES).items()}
    got = backbone(tokens)["sequence_output"].numpy()[tokens["padding_mask"]]
    reference = NumpyBert(minilm_preset)(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"],
                                         bottleneck=reference_adapters)
    untouched = NumpyBert(minilm_preset)(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"])
    mask = tokens["padding_mask"]
    assert np.abs(reference[mask] - untouched[mask]).max() > 1e-2  # the adapters change the outputs
    # float32 through six layers whose adapters move the output by ~1: errors up to ~3e-5
    np.testing.assert_allclose(got, reference[mask], atol=1e-4)


def test_options_without_an_exact_placement_are_refused():
    with pytest.raises(ValueError, match="train_layer_norms=False"):
        ka.HoulsbyConfig(original_ln_before=True)
    with pytest.raises(ValueError, match="ParallelAdapterConfig has no original_ln_before"):
        ka.ParallelAdapterConfig(original_ln_before=True)
    with pytest.raises(ValueError, match="must be True or False"):
        ka.PfeifferConfig(original_ln_before="yes")


def test_new_fields_round_trip_and_normed_adapters_do_not_fuse():
    config = ka.HoulsbyConfig(activation="silu", train_layer_norms=False, original_ln_before=True)
    assert ka.get_adapter_config(config.get_config()) == config
    assert config.sites() == ("self_attention_layer_norm", "feedforward_layer_norm")
    assert config.unit_sites() == config.sites()
    assert not config.fusable and ka.HoulsbyConfig().fusable
