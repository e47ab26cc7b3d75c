"""AdapterHub bottleneck, LoRA and (IA)^3 adapters trained in PyTorch predict the same here.

The AdapterHub side runs in its own interpreter (`adapters` 1.3 needs
transformers 4.57): `scripts/setup_adapterhub.sh` makes `.venv-adapterhub`,
or set ADAPTERHUB_PYTHON; without one these tests are skipped.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_adapters as ka

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from adapterhub_side import TEST  # noqa: E402

CASES = {
    "seq_bn": ({"config": "seq_bn"}, {}),
    "double_seq_bn": ({"config": "double_seq_bn"}, {}),
    "par_bn": ({"config": "par_bn"}, {}),
    "seq_bn_gelu_some_layers_pooler_head": (
        {"config": "seq_bn", "non_linearity": "gelu", "reduction_factor": 8, "leave_out": [1, 4]},
        {"use_pooler": True, "layers": 1},
    ),
    "lora_every_module": (
        {"config": "lora", "r": 4, "alpha": 16, "attn_matrices": ["q", "k", "v"], "intermediate_lora": True,
         "output_lora": True, "leave_out": [2]},
        {},
    ),
    "ia3": ({"config": "ia3"}, {}),
    "prefix_tuning": ({"config": "prefix_tuning", "prefix_length": 8}, {}),
    "prefix_tuning_flat": ({"config": "prefix_tuning_flat", "prefix_length": 8}, {"use_pooler": True, "layers": 1}),
    "prompt_tuning_after_cls": ({"config": "prompt_tuning", "prompt_length": 6, "combine": "prefix_after_bos"}, {}),
}
EXPECTED_METHOD = {"seq_bn": "pfeiffer", "double_seq_bn": "houlsby", "par_bn": "parallel", "lora": "lora", "ia3": "ia3",
                   "prefix_tuning": "prefix", "prefix_tuning_flat": "prefix", "prompt_tuning": "prompt"}


@pytest.fixture(scope="session")
def adapterhub_python():
    python = os.environ.get("ADAPTERHUB_PYTHON") or str(TESTS.parent / ".venv-adapterhub" / "bin" / "python")
    if not os.path.isfile(python):
        pytest.skip("no AdapterHub interpreter (scripts/setup_adapterhub.sh, or set ADAPTERHUB_PYTHON)")
    return python


def _train_in_adapterhub(python, preset, config, head, out):
    proc = subprocess.run(
        [python, str(TESTS / "adapterhub_side.py"), preset, json.dumps(config), json.dumps(head), str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.array(json.loads((out / "probabilities.json").read_text()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_adapterhub_adapter_trained_in_pytorch_predicts_the_same(adapterhub_python, minilm_preset, tmp_path, case):
    config, head = CASES[case]
    expected = _train_in_adapterhub(adapterhub_python, minilm_preset, config, head, tmp_path)
    assert np.abs(expected - 1 / 3).max() > 0.05  # training moved the head off chance
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=32)
    name = model.load_adapter(tmp_path / "adapter")
    model.set_active_adapters(name)
    assert model.state.configs[name].method == EXPECTED_METHOD[config["config"]]
    np.testing.assert_allclose(model.predict(TEST, verbose=0), expected, atol=1e-4)


def _write_hub_lora(folder, preset, config, seed=0, layers=range(6), modules=("query", "value"), rank=2):
    """An AdapterHub LoRA folder with a two-layer head, as `adapters` 1.3 writes one (no PyTorch needed)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for i in layers:
        for m in modules:
            tensors[f"bert.encoder.layer.{i}.attention.self.{m}.loras.hub.lora_A"] = rng.normal(0, 0.05, (rank, 384))
            tensors[f"bert.encoder.layer.{i}.attention.self.{m}.loras.hub.lora_B"] = rng.normal(0, 0.05, (384, rank))
    head = {"heads.hub.1.weight": rng.normal(0, 0.05, (384, 384)), "heads.hub.1.bias": rng.normal(0, 0.05, 384),
            "heads.hub.4.weight": rng.normal(0, 0.5, (3, 384)), "heads.hub.4.bias": rng.normal(0, 0.5, 3)}
    folder.mkdir(parents=True)
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(folder / "adapter.safetensors"))
    save_file({k: v.astype(np.float32) for k, v in head.items()}, str(folder / "model_head.safetensors"))
    common = {"model_name": preset, "model_type": "bert", "name": "hub", "version": "adapters.1.3.0"}
    (folder / "adapter_config.json").write_text(json.dumps({"config": {
        "architecture": "lora", "r": rank, "alpha": 8, "dropout": 0.0, "composition_mode": "add", "use_gating": False,
        "use_dora": False, "attn_matrices": ["q", "v"], **config}, **common}))
    (folder / "head_config.json").write_text(json.dumps({"config": {
        "head_type": "classification", "num_labels": 3, "layers": 2, "activation_function": "tanh", "use_pooler": False,
        "label2id": {"a": 0, "b": 1, "c": 2}}, **common}))
    return tensors, head


def test_an_adapterhub_lora_predicts_as_the_float64_reference(minilm_preset, tmp_path):
    from bert_reference import NumpyBert

    from keras_adapters.io import presets

    tensors, head = _write_hub_lora(tmp_path / "hub", minilm_preset, {})
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=24)
    model.set_active_adapters(model.load_adapter(tmp_path / "hub"))
    tokens = {k: np.asarray(v) for k, v in presets.load_preprocessor(minilm_preset, 24)(TEST).items()}
    lora = {(i, m): (tensors[f"bert.encoder.layer.{i}.attention.self.{m}.loras.hub.lora_A"],
                     tensors[f"bert.encoder.layer.{i}.attention.self.{m}.loras.hub.lora_B"], 8 / 2)
            for i in range(6) for m in ("query", "value")}
    cls = NumpyBert(minilm_preset)(tokens["token_ids"], tokens["segment_ids"], tokens["padding_mask"], lora=lora)[:, 0]
    hidden = np.tanh(cls @ head["heads.hub.1.weight"].T + head["heads.hub.1.bias"])
    logits = hidden @ head["heads.hub.4.weight"].T + head["heads.hub.4.bias"]
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(model.predict(TEST, verbose=0), expected, atol=1e-5)
    assert model.heads["hub"].class_names == ["a", "b", "c"]


@pytest.mark.parametrize(
    "config, layout, message",
    [
        ({"use_gating": True}, {}, r"options \{'use_gating': True\} have no exact counterpart"),
        ({"use_dora": True}, {}, r"options \{'use_dora': True\}"),
        ({}, {"layers": [0], "modules": ("query",), "extra": True}, "its layers adapt different modules"),
        ({"architecture": "prefix_tuning"}, {}, "its config and its weights disagree on prefix tuning"),
        ({"architecture": "prompt_tuning"}, {}, "its config and its weights disagree on prompt tuning"),
        ({"architecture": "bottleneck"}, {}, "its config is a bottleneck adapter .* but its weights are LoRA"),
        ({"composition_mode": "mix"}, {}, "composition_mode 'mix'"),
        ({"composition_mode": "scale"}, {}, r"one lora_B vector \[out, 1\] per module"),
    ],
)
def test_what_an_adapterhub_lora_cannot_compute_the_same_is_refused(minilm_preset, tmp_path, config, layout, message):
    extra = layout.pop("extra", False)
    _write_hub_lora(tmp_path / "hub", minilm_preset, config, **layout)
    if extra:  # layer 1 adapts value only
        _write_hub_lora(tmp_path / "other", minilm_preset, config, layers=[1], modules=("value",))
        from safetensors.numpy import load_file
        from safetensors.numpy import save_file

        merged = {**load_file(str(tmp_path / "hub" / "adapter.safetensors")), **load_file(str(tmp_path / "other" / "adapter.safetensors"))}
        save_file(merged, str(tmp_path / "hub" / "adapter.safetensors"))
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=24)
    with pytest.raises(ka.AdapterFormatError, match=message):
        model.load_adapter(tmp_path / "hub")
    assert not model.state.configs


# ------------------------------------------------------------ ours -> AdapterHub
EXPORT_CASES = {
    "seq_bn_some_layers": ("pfeiffer", {"original_ln_before": True, "target_layers": "transformer_layer_[1-4]"},
                           {"pooling": "cls_token", "hidden_activation": "tanh"}),
    "pfeiffer_gelu_size_7_pooler": ("pfeiffer", {"activation": "gelu", "bottleneck_size": 7}, {"pooling": "cls"}),
    "double_seq_bn": ("houlsby", {"train_layer_norms": False, "activation": "swish"},
                      {"pooling": "cls_token", "hidden_activation": "tanh"}),
    "par_bn": ("parallel", {}, {"pooling": "cls_token", "hidden_activation": "relu"}),
    "lora_four_modules": ("lora", {"rank": 4, "alpha": 8, "target_modules": (
        "query", "value", "feedforward_intermediate_dense", "feedforward_output_dense")}, {"pooling": "cls"}),
    "ia3_outputs": ("ia3", {"feedforward_modules": ()}, {"pooling": "cls_token", "hidden_activation": "tanh"}),
    "prefix_flat": ("prefix", {"prefix_length": 6}, {"pooling": "cls_token", "hidden_activation": "tanh"}),
    "prompt_after_cls": ("prompt", {"num_virtual_tokens": 5, "init": "random"}, {"pooling": "cls"}),
}


def _trained_looking_adapter(minilm_preset, folder, method, settings, head, seed=0):
    """Our adapter away from its identity start, head included (its probabilities away
    from saturation), saved to `folder`; returns its probabilities on TEST."""
    from conftest import randomize_adapter_weights

    keras.utils.set_random_seed(seed)
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=32)
    model.add_adapter("ours", method={"method": method, **settings}, num_classes=3,
                      class_names=["business", "sport", "tech"], **head)
    model.set_active_adapters("ours")
    randomize_adapter_weights(model.backbone, seed=seed, scale=0.2)
    rng = np.random.default_rng(seed)
    for w in model.heads["ours"].weights:
        w.assign(w.numpy() + 0.05 * rng.standard_normal(w.shape).astype(np.float32))
    model.save_adapter(folder, "ours")
    return model.predict(TEST, verbose=0)


@pytest.mark.parametrize("case", sorted(EXPORT_CASES))
def test_our_adapter_written_for_adapterhub_predicts_the_same_there(adapterhub_python, minilm_preset, tmp_path, case):
    from keras_adapters.runs import conversion

    ours = _trained_looking_adapter(minilm_preset, tmp_path / "ours", *EXPORT_CASES[case])
    assert np.abs(ours - 1 / 3).max() > 0.01 and ours.max() < 0.99  # neither chance nor saturated
    conversion.to_adapterhub(tmp_path / "ours", tmp_path / "hub")
    proc = subprocess.run([adapterhub_python, str(TESTS / "adapterhub_side.py"), "--load", minilm_preset,
                           str(tmp_path / "hub"), str(tmp_path / "out.json")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads((tmp_path / "out.json").read_text())
    assert theirs["name"] == "ours"
    np.testing.assert_allclose(ours, np.array(theirs["probabilities"]), atol=1e-5)


@pytest.mark.parametrize("case", [
    "seq_bn_some_layers", "lora_four_modules", "prefix_flat", "prompt_after_cls",
    # ~10 s each: the slow run (CI runs it too) keeps the default run under 15 minutes
    *(pytest.param(c, marks=pytest.mark.slow) for c in ("pfeiffer_gelu_size_7_pooler", "double_seq_bn", "ia3_outputs")),
])
def test_an_adapterhub_folder_we_write_reads_back_to_the_same_adapter(minilm_preset, tmp_path, case):
    """Without PyTorch: the written folder (`.bin` files from our own writer) through our AdapterHub reader."""
    from keras_adapters.io import adapterhub_format
    from keras_adapters.io.adapter_folder import read_folder
    from keras_adapters.runs import conversion

    method, settings, head = EXPORT_CASES[case]
    ours = _trained_looking_adapter(minilm_preset, tmp_path / "ours", method, settings, head, seed=1)
    conversion.to_adapterhub(tmp_path / "ours", tmp_path / "hub")
    written = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    assert written["name"] == "ours" and written["model_type"] == "bert"
    if "reduction_factor" in written["config"]:  # AdapterHub sizes the bottleneck as int(hidden // reduction_factor)
        size = next(v for k, v in read_folder(tmp_path / "ours")[1].items() if k.endswith("down/kernel")).shape[-1]
        assert int(384 // written["config"]["reduction_factor"]) == size
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == sorted(
        [adapterhub_format.CONFIG_FILE, adapterhub_format.HEAD_CONFIG_FILE, "pytorch_adapter.bin", "pytorch_model_head.bin"])
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=32)
    name = model.load_adapter(tmp_path / "hub")
    model.set_active_adapters(name)
    assert model.state.configs[name].method == method
    assert model.heads[name].class_names == ["business", "sport", "tech"]
    np.testing.assert_allclose(model.predict(TEST, verbose=0), ours, atol=1e-6)


@pytest.mark.parametrize(
    "method, settings, head, message",
    [
        ("houlsby", {}, {"pooling": "cls_token"}, r"trained its own copies of the layer norms.*train_layer_norms=False"),
        ("lora", {}, {"pooling": "cls"}, r"AdapterHub's LoRA adapts no \['attention_output'\]"),
        ("lora", {"use_dora": True, "target_modules": ("query",)}, {"pooling": "cls"}, "rsLoRA, DoRA"),
        ("ia3", {}, {"pooling": "cls"}, r"scaling a module's inputs .*feedforward_modules=\(\)"),
        ("prompt", {"placement": "before_cls"}, {"pooling": "cls"}, r"placement 'before_cls', peft's\) has no AdapterHub"),
        ("bitfit", {}, {"pooling": "cls"}, r"method 'bitfit' has no AdapterHub form"),
        ("prefix", {"target_layers": "transformer_layer_[0-2]"}, {"pooling": "cls"}, "a prefix on some layers only"),
        ("pfeiffer", {}, {"pooling": "mean"}, r"pools by 'mean'"),
        ("parallel", {"scaling": "learned"}, {"pooling": "cls"}, r"scaling 'learned' has no AdapterHub form"),
        ("pfeiffer", {}, {"task": "token_classification"}, r"its task is 'token_classification'; single-text"),
    ],
)
def test_what_adapterhub_cannot_compute_is_refused_by_name_and_nothing_is_written(
    minilm_preset, tmp_path, method, settings, head, message
):
    from keras_adapters.runs import conversion

    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=16)
    model.add_adapter("ours", method={"method": method, **settings}, num_classes=2, **head)
    model.save_adapter(tmp_path / "ours", "ours")
    with pytest.raises(ka.AdapterFormatError, match=message):
        conversion.to_adapterhub(tmp_path / "ours", tmp_path / "hub")
    assert not (tmp_path / "hub").exists()


def test_an_adapterhub_prompt_in_front_of_cls_is_refused_with_the_option_that_converts(minilm_preset, tmp_path):
    from safetensors.numpy import save_file

    folder = tmp_path / "hub"
    _write_hub_lora(folder, minilm_preset, {})
    save_file({"bert.prompt_tuning.prompt_tunings.hub.prompt_embedding.weight": np.zeros((4, 384), np.float32)},
              str(folder / "adapter.safetensors"))
    config = json.loads((folder / "adapter_config.json").read_text())
    config["config"] = {"architecture": "prompt_tuning", "combine": "prefix", "prompt_length": 4}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=16)
    with pytest.raises(ka.AdapterFormatError, match=r"combined by 'prefix'.*combine='prefix_after_bos'"):
        model.load_adapter(folder)
    assert not model.state.configs
