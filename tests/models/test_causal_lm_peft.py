"""peft folders of causal LMs (`task_type: CAUSAL_LM`) load into `AdapterCausalLM`:
LoRA on every projection and prompt tuning compute what a float64 NumPy Llama
computes with peft's update (`W + alpha/r * B A`) or its virtual vectors in front;
a classifier's folder is refused by name."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from keras_adapters.io.adapter_folder import AdapterFormatError
from keras_adapters.models.causal_lm import AdapterCausalLM

from decoder_checks import assert_adapted_logits
from llama_reference import NumpyLlama
from tiny_llama import tiny_llama_folder

IDS = np.array([[3, 9, 6, 11, 4, 7, 8], [5, 5, 10, 3, 6, 9, 4]])
MODULES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
           "mlp.up_proj", "mlp.down_proj"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny_llama"))


def _write_peft(folder, config, tensors):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "tiny-llama", **config}))
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, str(folder / "adapter_model.safetensors"))
    return folder


def _lora_folder(base, path, rank=2, alpha=6.0, task_type="CAUSAL_LM"):
    """A peft LoRA folder on every projection, and the weights `W + alpha/r * B A` it means."""
    reference = NumpyLlama(base)
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(reference.config["num_hidden_layers"]):
        for module in MODULES:
            weight = f"model.layers.{i}.{module}.weight"
            out_dim, in_dim = reference.w[weight].shape
            a, b = rng.normal(0, 0.3, (rank, in_dim)), rng.normal(0, 0.3, (out_dim, rank))
            tensors[f"base_model.model.model.layers.{i}.{module}.lora_A.weight"] = a
            tensors[f"base_model.model.model.layers.{i}.{module}.lora_B.weight"] = b
            reference.w[weight] = reference.w[weight] + alpha / rank * b.astype(np.float32) @ a.astype(np.float32)
    config = {"peft_type": "LORA", "task_type": task_type, "r": rank, "lora_alpha": alpha,
              "target_modules": [m.split(".")[1] for m in MODULES], "lora_dropout": 0.0, "bias": "none"}
    return _write_peft(path, config, tensors), reference


def _logits(model):
    return np.asarray(model({"token_ids": IDS, "padding_mask": np.ones_like(IDS, bool)}), np.float64)


def test_a_peft_lora_of_a_causal_lm_computes_peft_s_update(folder, tmp_path):
    peft_folder, reference = _lora_folder(folder, tmp_path / "peft")
    model = AdapterCausalLM.from_adapter(peft_folder, preset=folder)
    config = model.adapter_config()
    assert (config.rank, config.alpha, len(config.target_modules)) == (2, 6.0, 7)
    expected = reference(IDS)
    assert_adapted_logits(_logits(model), expected, NumpyLlama(folder)(IDS))
    # Saved as our folder, it reloads with the checkpoint's fingerprint.
    model.save_adapter(tmp_path / "ours")
    np.testing.assert_allclose(_logits(AdapterCausalLM.from_adapter(tmp_path / "ours", preset=folder)), _logits(model),
                               atol=1e-6)


def test_a_peft_prompt_tuning_adapter_puts_its_vectors_in_front(folder, tmp_path):
    hidden = NumpyLlama(folder).config["hidden_size"]
    vectors = np.random.default_rng(1).normal(0, 1.0, (4, hidden))
    config = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 4,
              "num_transformer_submodules": 1}
    peft_folder = _write_peft(tmp_path / "peft", config, {"prompt_embeddings": vectors})
    model = AdapterCausalLM.from_adapter(peft_folder, preset=folder)
    expected = NumpyLlama(folder)(IDS, virtual=vectors.astype(np.float32).astype(np.float64))[:, 4:]
    np.testing.assert_allclose(_logits(model), expected, atol=2e-4 * np.abs(expected).max())


def test_a_classifier_s_folder_and_a_missing_preset_are_refused_by_name(folder, tmp_path):
    peft_folder, _ = _lora_folder(folder, tmp_path / "peft", task_type="SEQ_CLS")
    model = AdapterCausalLM.from_preset(folder, method=None)
    with pytest.raises(AdapterFormatError, match="task_type 'SEQ_CLS'.*loads task_type \\['CAUSAL_LM'\\]"):
        model.load_adapter(peft_folder)
    assert model.adapter_names == []
    with pytest.raises(ValueError, match="peft adapter of 'tiny-llama': pass preset="):
        AdapterCausalLM.from_adapter(peft_folder)


def test_the_command_line_converts_a_peft_causal_lm_and_predicts_with_it(folder, tmp_path, capsys):
    from keras_adapters import cli

    peft_folder, _ = _lora_folder(folder, tmp_path / "peft")
    assert cli.main(["convert", str(peft_folder), "-o", str(tmp_path / "ours"), "--preset", str(folder)]) == 0
    assert "load it with AdapterCausalLM.from_adapter" in capsys.readouterr().out
    expected = AdapterCausalLM.from_adapter(peft_folder, preset=folder).generate(["ab c", "a1"], max_new_tokens=4)
    assert cli.main(["predict", str(tmp_path / "ours"), "ab c", "a1", "--max-new-tokens", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)  # one JSON list, as every task's predict --json
    assert [r["generation"] for r in results] == expected
