"""peft adapter folders load with peft's outputs (against the float64 reference,
no PyTorch needed), and what cannot be computed the same is refused by name."""

import json
import os
import pickle
import zipfile

import numpy as np
import pytest
from bert_reference import NumpyBert
from conftest import PEFT_PREFIX as PREFIX
from conftest import write_peft_lora
from safetensors.numpy import load_file
from safetensors.numpy import save_file

import keras_adapters as ka
from keras_adapters.io import presets

SENTENCES = ["The striker scored twice as the home side won the cup final.", "Shares fell 4% on Monday."]
LAYERS = 6


@pytest.fixture(scope="module")
def model(minilm_preset):
    return ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=24)


def _reference_probabilities(preset, folder, tokens, scale, pooler=None):
    """BertForSequenceClassification with peft's LoRA, in float64 NumPy: pooler (`pooler`:
    a function of BERT's pooler weight and bias giving the adapted ones), classifier, softmax."""
    weights = load_file(os.path.join(folder, "adapter_model.safetensors"))
    lora = {
        (i, site): (
            weights[f"{PREFIX}.{i}.attention.self.{site}.lora_A.weight"].astype(np.float64),
            weights[f"{PREFIX}.{i}.attention.self.{site}.lora_B.weight"].astype(np.float64),
            scale(i, site) if callable(scale) else scale,
        )
        for i in range(LAYERS)
        for site in ("query", "value")
    }
    bert = NumpyBert(preset)
    cls = bert(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"], lora=lora)[:, 0]
    weight, bias = (pooler or (lambda w, b: (w, b)))(bert.w["pooler.dense.weight"], bert.w["pooler.dense.bias"])
    pooled = np.tanh(cls @ weight.T + bias)
    logits = pooled @ weights["base_model.model.classifier.weight"].T + weights["base_model.model.classifier.bias"]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("use_rslora", [False, True])
def test_a_peft_lora_classifier_predicts_as_peft_computes(model, minilm_preset, tmp_path, use_rslora):
    folder = write_peft_lora(tmp_path / "peft", minilm_preset, use_rslora=use_rslora)
    name = model.load_adapter(folder, name=f"peft_{use_rslora}")
    model.set_active_adapters(name)
    tokens = {k: np.asarray(v) for k, v in presets.load_preprocessor(minilm_preset, 24)(SENTENCES).items()}
    scale = 8 / (np.sqrt(4) if use_rslora else 4)
    expected = _reference_probabilities(minilm_preset, folder, tokens, scale)
    np.testing.assert_allclose(model.predict(SENTENCES, verbose=0), expected, atol=1e-5)
    assert model.state.configs[name].get_config()["use_rslora"] is use_rslora


def test_the_converted_folder_is_an_adapter_folder_with_the_same_outputs(model, minilm_preset, tmp_path):
    name = model.load_adapter(write_peft_lora(tmp_path / "peft", minilm_preset, seed=2), name="conv")
    model.set_active_adapters(name)
    expected = model.predict(SENTENCES, verbose=0)
    model.save_adapter(tmp_path / "ours", name="conv")
    again = ka.AdapterModel.from_adapter(tmp_path / "ours")
    np.testing.assert_allclose(again.predict(SENTENCES, verbose=0), expected, atol=1e-6)
    assert again.heads[again.active_adapters].pooling == "cls"


def test_per_module_ranks_and_alphas_are_read_as_peft_assigns_them(model, minilm_preset, tmp_path):
    folder = write_peft_lora(
        tmp_path / "ranked", minilm_preset, seed=4,
        rank_pattern={"layer.0.attention.self.query": 2, "layer\\.[45]\\..*value": 6}, alpha_pattern={"value": 3},
    )
    weights = load_file(os.path.join(folder, "adapter_model.safetensors"))
    rng = np.random.default_rng(5)
    for i, site, rank in [(0, "query", 2), (4, "value", 6), (5, "value", 6)]:  # what peft would have built
        weights[f"{PREFIX}.{i}.attention.self.{site}.lora_A.weight"] = rng.normal(0, 0.05, (rank, 384)).astype(np.float32)
        weights[f"{PREFIX}.{i}.attention.self.{site}.lora_B.weight"] = rng.normal(0, 0.05, (384, rank)).astype(np.float32)
    _rewrite(folder, tensors=weights)
    model.set_active_adapters(model.load_adapter(folder, name="ranked"))
    tokens = {k: np.asarray(v) for k, v in presets.load_preprocessor(minilm_preset, 24)(SENTENCES).items()}
    ranks = {(0, "query"): 2, (4, "value"): 6, (5, "value"): 6}
    expected = _reference_probabilities(
        minilm_preset, folder, tokens, lambda i, site: (3 if site == "value" else 8) / ranks.get((i, site), 4)
    )
    np.testing.assert_allclose(model.predict(SENTENCES, verbose=0), expected, atol=1e-5)
    config = model.adapter_config("ranked")
    assert config.rank_pattern == {"transformer_layer_0/query": 2, "transformer_layer_4/value": 6, "transformer_layer_5/value": 6}
    assert config.alpha_pattern == {f"transformer_layer_{i}/value": 3.0 for i in range(LAYERS)}


POOLER = "base_model.model.bert.pooler.dense"


@pytest.mark.parametrize("kind", ["lora", "saved"])
def test_an_adapted_pooler_becomes_the_heads_own(model, minilm_preset, tmp_path, kind):
    """LoRA on BERT's pooler (peft's "all-linear") or a trained copy (modules_to_save) is folded into
    a head that reads the [CLS] token through its own tanh layer, BERT's pooler's place."""
    extra = {"modules_to_save": ["classifier", "pooler"]} if kind == "saved" else {}
    folder = write_peft_lora(tmp_path / kind, minilm_preset, seed=7, **extra)
    weights = load_file(os.path.join(folder, "adapter_model.safetensors"))
    rng = np.random.default_rng(8)
    if kind == "saved":
        weights[f"{POOLER}.weight"] = rng.normal(0, 0.05, (384, 384)).astype(np.float32)
        weights[f"{POOLER}.bias"] = rng.normal(0, 0.05, (384,)).astype(np.float32)

        def pooler(w, b):
            return weights[f"{POOLER}.weight"].astype("f8"), weights[f"{POOLER}.bias"].astype("f8")
    else:
        weights[f"{POOLER}.lora_A.weight"] = rng.normal(0, 0.05, (4, 384)).astype(np.float32)
        weights[f"{POOLER}.lora_B.weight"] = rng.normal(0, 0.05, (384, 4)).astype(np.float32)

        def pooler(w, b):  # peft: W + (alpha / r) B A
            return w + 2.0 * weights[f"{POOLER}.lora_B.weight"].astype("f8") @ weights[f"{POOLER}.lora_A.weight"].astype("f8"), b
    _rewrite(folder, tensors=weights)
    model.set_active_adapters(model.load_adapter(folder, name=f"pooler_{kind}"))
    tokens = {k: np.asarray(v) for k, v in presets.load_preprocessor(minilm_preset, 24)(SENTENCES).items()}
    expected = _reference_probabilities(minilm_preset, folder, tokens, 2.0, pooler=pooler)
    np.testing.assert_allclose(model.predict(SENTENCES, verbose=0), expected, atol=1e-5)
    assert model.heads[f"pooler_{kind}"].pooling == "cls_token"
    plain = _reference_probabilities(minilm_preset, folder, tokens, 2.0)  # the pooler matters here
    assert np.abs(plain - expected).max() > 1e-3


def _write_peft_prompt(folder, preset, pooler=False):
    rng = np.random.default_rng(6)
    tensors = {"prompt_embeddings": rng.normal(0, 0.05, (4, 384)), "base_model.classifier.weight": rng.normal(0, 0.5, (3, 384)),
               "base_model.classifier.bias": rng.normal(0, 0.5, (3,))}
    if pooler:
        tensors.update({"base_model.bert.pooler.dense.weight": rng.normal(0, 0.05, (384, 384)),
                        "base_model.bert.pooler.dense.bias": np.zeros(384)})
    folder.mkdir()
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "PROMPT_TUNING", "task_type": "SEQ_CLS", "num_virtual_tokens": 4, "token_dim": 384,
        "num_transformer_submodules": None, "prompt_tuning_init": "RANDOM", "base_model_name_or_path": preset,
        "modules_to_save": ["classifier", "score"] + (["pooler"] if pooler else []),
    }))
    return tensors


def test_a_prompt_with_its_own_pooler_is_refused(model, minilm_preset, tmp_path):
    """BERT's pooler reads the first virtual token under peft's prompt tuning; a head's own pooler here reads [CLS]."""
    _write_peft_prompt(tmp_path / "prompt", minilm_preset, pooler=True)
    with pytest.raises(ka.AdapterFormatError, match="prompt-tuning adapter with its own pooler"):
        model.load_adapter(tmp_path / "prompt", name="prompt_pooler")


def test_a_peft_prompt_tuning_classifier_predicts_as_peft_computes(model, minilm_preset, tmp_path):
    """peft's PROMPT_TUNING: word vectors before [CLS]; BERT's pooler reads the first of them."""
    folder = tmp_path / "prompt"
    tensors = _write_peft_prompt(folder, minilm_preset)
    model.set_active_adapters(model.load_adapter(folder, name="prompt"))
    tokens = {k: np.asarray(v) for k, v in presets.load_preprocessor(minilm_preset, 24)(SENTENCES).items()}
    bert = NumpyBert(minilm_preset)
    _, first = bert(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"], word_prompt=tensors["prompt_embeddings"], first=True)
    pooled = np.tanh(first @ bert.w["pooler.dense.weight"].T + bert.w["pooler.dense.bias"])
    logits = pooled @ tensors["base_model.classifier.weight"].T + tensors["base_model.classifier.bias"]
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(model.predict(SENTENCES, verbose=0), expected, atol=1e-5)
    assert model.adapter_config("prompt").placement == "before_cls"


def _rewrite(folder, tensors=None, **config):
    if tensors is not None:
        save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    path = os.path.join(folder, "adapter_config.json")
    with open(path) as f:
        data = json.load(f)
    with open(path, "w") as f:
        json.dump({**data, **config}, f)


def _refusals(folder):
    weights = load_file(os.path.join(folder, "adapter_model.safetensors"))
    pooler = dict(weights, **{"base_model.model.bert.pooler.dense.lora_A.weight": np.zeros((4, 384), np.float32)})
    return {
        "pooler": ({"tensors": pooler}, r"pooler tensors \['lora_A.weight'\] are neither a trained copy"),
        "embeddings": ({"tensors": dict(weights, **{"base_model.model.bert.embeddings.word_embeddings.lora_A": np.zeros((4, 9), np.float32)})},
                       r"no place for: \['base_model.model.bert.embeddings.word_embeddings.lora_A'\]"),
        "bias": ({"bias": "lora_only"}, "bias='lora_only'"),
        "task": ({"task_type": "FEATURE_EXTRACTION"}, "task_type 'FEATURE_EXTRACTION'"),
        "saved": ({"modules_to_save": ["classifier", "embeddings"]}, r"modules_to_save \['embeddings'\]"),
        "adalora": ({"peft_type": "ADALORA"}, "peft type 'ADALORA' cannot be read yet"),
        "prefix": ({"peft_type": "PREFIX_TUNING"}, "past key values.*positions on by the prefix length"),
    }


@pytest.mark.parametrize("case", ["pooler", "embeddings", "bias", "task", "saved", "adalora", "prefix"])
def test_what_cannot_be_computed_the_same_is_refused_by_name(model, minilm_preset, tmp_path, case):
    folder = write_peft_lora(tmp_path / case, minilm_preset)
    change, message = _refusals(folder)[case]
    _rewrite(folder, **change)
    before = set(model.state.configs)
    with pytest.raises(ka.AdapterFormatError, match=message):
        model.load_adapter(folder, name=case)
    assert set(model.state.configs) == before


class _Payload:
    def __reduce__(self):
        return os.system, ("touch payload_ran",)


def test_a_bin_weights_file_that_runs_code_is_refused(model, minilm_preset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = write_peft_lora(tmp_path / "bin", minilm_preset)
    os.remove(os.path.join(folder, "adapter_model.safetensors"))
    with zipfile.ZipFile(os.path.join(folder, "adapter_model.bin"), "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": _Payload()}, protocol=2))
    with pytest.raises(ka.AdapterFormatError, match="asks to run (posix|os).system"):
        model.load_adapter(folder, name="bin")
    assert not (tmp_path / "payload_ran").exists()


def test_a_corrupt_weights_file_is_refused(model, minilm_preset, tmp_path):
    folder = write_peft_lora(tmp_path / "corrupt", minilm_preset)
    path = os.path.join(folder, "adapter_model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ka.AdapterFormatError, match="not a readable safetensors file"):
        model.load_adapter(folder, name="corrupt")
