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
}
EXPECTED_METHOD = {"seq_bn": "pfeiffer", "double_seq_bn": "houlsby", "par_bn": "parallel", "lora": "lora", "ia3": "ia3"}


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
        ({"architecture": "prefix_tuning"}, {}, "'prefix_tuning' adapters cannot be read yet"),
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
