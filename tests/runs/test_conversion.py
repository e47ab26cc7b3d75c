"""`keras-adapters convert`: peft folders in, peft folders out, refusals that name the fix."""

import json
import os

import numpy as np
import pytest
from conftest import write_peft_lora
from safetensors.numpy import load_file

import keras_adapters as ka
from keras_adapters import cli
from keras_adapters.runs import conversion

TEXTS = ["The striker scored twice.", "Shares fell 4% on Monday."]


def test_convert_predict_and_export_back_from_the_command_line(minilm_preset, tmp_path, capsys):
    source = write_peft_lora(tmp_path / "peft", "sentence-transformers/all-MiniLM-L6-v2", use_rslora=True)
    assert cli.main(["convert", source, "-o", str(tmp_path / "ours")]) == 0  # the hub name of "default"
    assert "lora adapter written to" in capsys.readouterr().out
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=128)
    model.set_active_adapters(model.load_adapter(source))
    expected = model.predict(TEXTS, verbose=0)

    assert cli.main(["predict", str(tmp_path / "ours"), *TEXTS, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    got = [[row["probabilities"][str(c)] for c in range(3)] for row in printed]
    np.testing.assert_allclose(got, expected, atol=1e-5)  # printed with 6 decimals

    assert cli.main(["convert", str(tmp_path / "ours"), "--to", "peft", "-o", str(tmp_path / "back")]) == 0
    before, after = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in (source, tmp_path / "back"))
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 8, True)
    assert config["base_model_name_or_path"] == os.path.abspath(minilm_preset)


def test_a_base_that_is_not_here_asks_for_preset(tmp_path, capsys):
    source = write_peft_lora(tmp_path / "peft", "bert-base-uncased")
    assert cli.main(["convert", source, "-o", str(tmp_path / "ours")]) == 2
    err = capsys.readouterr().err
    assert "'bert-base-uncased', which is not a folder here; pass --preset FOLDER" in err
    assert not (tmp_path / "ours").exists()


def test_our_folder_is_not_a_peft_source(minilm_preset, tmp_path, capsys):
    model = ka.AdapterTextClassifier.from_preset(minilm_preset, num_classes=2, method="lora", sequence_length=16)
    model.save_adapter(tmp_path / "ours")
    assert cli.main(["convert", str(tmp_path / "ours"), "-o", str(tmp_path / "x")]) == 2
    assert "is not a peft adapter folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "method, pooling, message",
    [
        ("houlsby", "cls", "method 'houlsby' has no peft type"),
        ("lora", "mean", "its head pools by 'mean'.*pooling='cls'"),
        ("prompt", "cls", r"its prompt sits after \[CLS\].*placement='before_cls'"),
    ],
)
def test_what_peft_cannot_hold_is_refused_and_nothing_is_written(minilm_preset, tmp_path, method, pooling, message):
    model = ka.AdapterTextClassifier.from_preset(
        minilm_preset, num_classes=2, method=method, sequence_length=16, pooling=pooling
    )
    model.save_adapter(tmp_path / "ours")
    with pytest.raises(ka.AdapterFormatError, match=message):
        conversion.to_peft(tmp_path / "ours", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_ia3_writes_peft_feedforward_modules_as_the_sides_it_scales(minilm_preset, tmp_path):
    config = ka.IA3Config(target_modules=("key", "attention_output", "feedforward_output_dense"),
                          feedforward_modules=("attention_output", "feedforward_output_dense"))
    model = ka.AdapterTextClassifier.from_preset(minilm_preset, num_classes=2, method=config, sequence_length=16,
                                                 pooling="cls")
    model.save_adapter(tmp_path / "ours")
    conversion.to_peft(tmp_path / "ours", tmp_path / "peft")
    peft_config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
    shapes = {k.split("layer.0.")[1]: v.shape for k, v in tensors.items() if ".layer.0." in k}
    assert shapes == {"attention.self.key.ia3_l": (384, 1), "attention.output.dense.ia3_l": (1, 384),
                      "output.dense.ia3_l": (1, 1536)}
    assert peft_config["peft_type"] == "IA3" and "attention\\.output\\.dense" in peft_config["feedforward_modules"]


def test_a_prompt_whose_head_has_its_own_pooler_does_not_go_to_peft(minilm_preset, tmp_path):
    model = ka.AdapterTextClassifier.from_preset(minilm_preset, method=None, sequence_length=16)
    model.add_adapter("p", ka.PromptConfig(num_virtual_tokens=2, placement="before_cls"), num_classes=2,
                      pooling="cls_token", hidden_activation="tanh")
    model.save_adapter(tmp_path / "ours", name="p")
    with pytest.raises(ka.AdapterFormatError, match="reads \\[CLS\\] through its own pooler"):
        conversion.to_peft(tmp_path / "ours", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_convert_to_adapterhub_from_the_command_line_and_back(minilm_preset, tmp_path, capsys):
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=16)
    model.add_adapter("news", method={"method": "pfeiffer", "original_ln_before": True}, num_classes=2,
                      pooling="cls_token", hidden_activation="tanh")
    model.save_adapter(tmp_path / "ours", "news")
    assert cli.main(["convert", str(tmp_path / "ours"), "--to", "adapterhub", "-o", str(tmp_path / "hub")]) == 0
    assert "pfeiffer adapter written to" in capsys.readouterr().out
    written = json.loads((tmp_path / "hub" / "adapter_config.json").read_text())
    assert written["config"]["original_ln_before"] and not written["config"]["mh_adapter"]
    assert written["config"]["reduction_factor"] == 16 and written["model_name"] == os.path.abspath(minilm_preset)
    # and back: AdapterHub's folder converts to ours with the same tensors
    assert cli.main(["convert", str(tmp_path / "hub"), "-o", str(tmp_path / "again")]) == 0
    from keras_adapters.io import adapter_folder

    (_, before), (_, after) = (adapter_folder.read_folder(tmp_path / d) for d in ("ours", "again"))
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_a_decoder_adapter_is_sent_to_peft_not_adapterhub(tmp_path, capsys):
    from tiny_llama import tiny_llama_folder

    from keras_adapters.models.causal_lm import AdapterCausalLM

    model = AdapterCausalLM.from_preset(tiny_llama_folder(tmp_path / "llama"), method="lora", sequence_length=16)
    model.save_adapter(tmp_path / "ours")
    assert cli.main(["convert", str(tmp_path / "ours"), "--to", "adapterhub", "-o", str(tmp_path / "hub")]) == 2
    assert "is a decoder adapter; AdapterHub folders are written for BERT-family classifiers (convert it --to peft)" in (
        capsys.readouterr().err)
    assert not (tmp_path / "hub").exists()
