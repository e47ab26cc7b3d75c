"""Causal-LM runs from the command line, on the tiny Llama: train writes a run
whose adapter reproduces the model, evaluate reports the perplexity that
`AdapterCausalLM.perplexity` computes and sacrebleu's BLEU/chrF of the
generations `predict` prints, through the registered `causal_lm` task as every
task's runs are; what is not supported is refused by name."""

import json
import re

import numpy as np
import pytest

import keras_adapters as ka
from keras_adapters import cli
from keras_adapters import tasks
from keras_adapters.core import injection
from keras_adapters.models.causal_lm import AdapterCausalLM
from keras_adapters.runs import evaluation
from keras_adapters.runs import folder as runs
from keras_adapters.runs import generation

from conftest import serve_many
from tiny_llama import tiny_llama_folder

RECORDS = [{"prompt": "ab c", "completion": "cab"}, {"prompt": "a1b2", "completion": "12 ab"},
           {"prompt": "abc", "completion": "a"}, {"prompt": "c", "completion": "ab ab"}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny_llama"))


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.slow  # ~50 s: keeps the default run under 15 minutes (CI runs it with -m slow)
def test_train_evaluate_predict_and_export_a_causal_lm_run(folder, tmp_path, capsys):
    data = _write(tmp_path / "train.jsonl", RECORDS * 4)
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--preset", folder, "--output", str(run), "--epochs", "2",
                     "--learning-rate", "0.01", "--method-option", "rank=4", "--bucket-by-length", "--quiet"]) == 0  # told from the records
    assert "trained lora on 16 examples" in capsys.readouterr().out
    config = json.loads((run / "train_config.json").read_text())
    assert (config["task"], config["method"]["rank"], config["best_epoch"]) == ("causal_lm", 4, 2)
    assert config["bucket_by_sequence_length"] is True

    assert cli.main(["evaluate", str(run), str(data), "--json", "--max-new-tokens", "6"]) == 0
    report = json.loads(capsys.readouterr().out)
    model = AdapterCausalLM.from_adapter(run / "adapter")
    expected = model.perplexity(RECORDS * 4)
    assert report["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    assert report["tokens"] == expected["tokens"]

    assert cli.main(["predict", str(run), "ab c", "a1b2", "--json", "--max-new-tokens", "6"]) == 0
    lines = json.loads(capsys.readouterr().out)  # one JSON list, as every task's predict --json
    assert [line["generation"] for line in lines] == model.generate(["ab c", "a1b2"], max_new_tokens=6)
    import sacrebleu

    generations = model.generate([r["prompt"] for r in RECORDS * 4], max_new_tokens=6)
    references = [r["completion"] for r in RECORDS * 4]
    assert report["bleu"] == pytest.approx(sacrebleu.corpus_bleu(generations, [references]).score)
    assert report["chrf"] == pytest.approx(sacrebleu.corpus_chrf(generations, [references]).score)
    assert np.isfinite(report["loss"])

    # A finished run is not trained over; it exports a generate signature a fresh process serves.
    assert cli.main(["train", str(data), "--task", "causal-lm", "--preset", folder, "--output", str(run)]) != 0
    assert "already holds a run; pass --overwrite" in capsys.readouterr().err
    assert cli.main(["export", "--adapters", f"{run},{run}", "--format", "tflite", "--output", str(tmp_path / "out")]) != 0
    assert "A TFLite decoder serves one adapter" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--format", "saved_model", "--output", str(tmp_path / "out")]) == 0
    assert "signature: generate (prompt, max_new_tokens, temperature, top_k, top_p) -> text" in capsys.readouterr().out
    (response,) = serve_many(str(tmp_path / "out" / "1"), [{"signature": "generate", "inputs": {
        "prompt": ["ab c"], "max_new_tokens": 6, "temperature": 0.0, "top_k": 0, "top_p": 1.0}, "dtypes": {
        "max_new_tokens": "int32", "temperature": "float32", "top_k": "int32", "top_p": "float32"}}], tmp_path)
    assert response["outputs"]["text"] == [lines[0]["generation"]]
    assert generation.is_causal_lm_run(run) and not generation.is_causal_lm_run(tmp_path)


@pytest.mark.slow  # ~40 s: keeps the default run under 15 minutes (CI runs it with -m slow)
def test_a_run_keeps_the_epoch_whose_validation_loss_per_token_is_lowest(folder, tmp_path):
    # Batches of 2 with 1-token and 6-token completions: a mean of per-batch means is not the
    # mean per token, which `perplexity` computes (float64) for the adapter the run kept.
    validation = [{"prompt": "ab", "completion": "c"}, {"prompt": "c", "completion": "ab ab ab"},
                  {"prompt": "a", "completion": "b"}]
    data, held_out = _write(tmp_path / "train.jsonl", RECORDS * 2), _write(tmp_path / "val.jsonl", validation)
    _, summary = generation.train_causal_lm(data, tmp_path / "run", folder, method="lora", epochs=3, batch_size=2,
                                            learning_rate=0.02, validation_data=held_out, verbose=0)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert metrics["best_epoch"] == summary["best_epoch"] == 1 + int(np.argmin(history["val_nll"]))
    kept = AdapterCausalLM.from_adapter(tmp_path / "run" / "adapter").perplexity(validation, batch_size=2)
    assert metrics["validation_loss"] == pytest.approx(kept["loss"], rel=1e-5)


def test_options_causal_lm_runs_do_not_take_are_refused_before_anything_loads(tmp_path, capsys):
    data = _write(tmp_path / "train.jsonl", RECORDS)
    for option, message in [(["--dp-epsilon", "3"], "--dp-epsilon: not supported for causal-lm runs yet"),
                            (["--precision", "mixed_bfloat16"], "--precision: not supported"),
                            (["--sequence-length", "0"], "--sequence-length must be at least 1")]:
        assert cli.main(["train", str(data), "--output", str(tmp_path / "run"), "--preset", "nowhere", *option]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _saved_run(folder, run, chat):
    """A run folder holding a LoRA with nonzero weights, saved as trained with or without chat."""
    model = AdapterCausalLM.from_preset(folder, method={"method": "lora", "rank": 2})
    rng = np.random.default_rng(0)
    for w in injection.adapter_weights_by_key(model.backbone, "default").values():
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    model.chat = chat
    model.save_adapter(run / "adapter")
    return model


@pytest.mark.slow  # ~40 s: keeps the default run under 15 minutes (CI runs it with -m slow)
def test_a_causal_lm_run_is_evaluated_and_predicted_through_its_task(folder, tmp_path, capsys):
    """The CLI asks the run's task (`causal_lm`, registered like every task)
    and loads the run into `AdapterCausalLM`; prompts are written as the
    adapter was trained (its folder records `chat`)."""
    model = _saved_run(folder, tmp_path / "run", chat=True)
    data = _write(tmp_path / "data.jsonl", RECORDS)
    assert tasks.detect_task(data) == "causal_lm"
    loaded = runs.load_run(tmp_path / "run")
    assert isinstance(loaded, AdapterCausalLM) and loaded.chat and loaded.task == "causal_lm"

    report = evaluation.evaluate_run(tmp_path / "run", data, batch_size=2, max_new_tokens=4)
    templated, plain = model.perplexity(RECORDS, chat=True), model.perplexity(RECORDS, chat=False)
    assert report["perplexity"] == pytest.approx(templated["perplexity"], rel=1e-6)
    assert abs(templated["loss"] - plain["loss"]) > 1e-3  # the template changes what is scored
    import sacrebleu

    generations = model.generate([r["prompt"] for r in RECORDS], max_new_tokens=4, chat=True)
    assert report["chrf"] == pytest.approx(sacrebleu.corpus_chrf(generations, [[r["completion"] for r in RECORDS]]).score)

    assert cli.main(["predict", str(tmp_path / "run"), "ab c", "a1b2", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == model.generate(["ab c", "a1b2"], max_new_tokens=4, chat=True)


def test_an_adapter_folder_of_0_25_takes_chat_from_its_run(folder, tmp_path):
    _saved_run(folder, tmp_path / "run", chat=True)
    path = tmp_path / "run" / "adapter" / "adapter_config.json"
    config = json.loads(path.read_text())
    del config["task"]["chat"]  # 0.25 kept it in train_config.json only
    path.write_text(json.dumps(config))
    assert not AdapterCausalLM.from_adapter(tmp_path / "run" / "adapter").chat
    (tmp_path / "run" / "train_config.json").write_text(json.dumps({"chat": True}))
    assert AdapterCausalLM.from_adapter(tmp_path / "run" / "adapter").chat
    assert generation.run_chat(tmp_path / "run")
    (tmp_path / "run" / "adapter").rename(tmp_path / "run" / "mine")  # a folder of its own, beside some run's file
    assert not AdapterCausalLM.from_adapter(tmp_path / "run" / "mine").chat


def test_decoder_adapters_stay_out_of_encoder_models_and_options_stay_with_their_task(folder, tmp_path, tiny_preset,
                                                                                      capsys):
    _saved_run(folder, tmp_path / "run", chat=False)
    encoder = ka.AdapterModel.from_preset(tiny_preset, method=None)
    with pytest.raises(ValueError, match="add and load them on keras_adapters.AdapterCausalLM"):
        encoder.add_adapter("x", "lora", task="causal-lm")
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2}))
    for source in (tmp_path / "run" / "adapter", peft):
        with pytest.raises(ValueError, match="holds a causal-lm adapter of a decoder: load it with "
                                             "keras_adapters.AdapterCausalLM.from_adapter"):
            encoder.load_adapter(source)
    assert encoder.adapter_names == []

    classifier = ka.AdapterModel.from_preset(tiny_preset, method="lora", num_classes=2, sequence_length=16)
    classifier.save_adapter(tmp_path / "classifier")
    for option in (["--max-new-tokens", "4"], ["--sampler", "top_k"]):
        assert cli.main(["predict", str(tmp_path / "classifier"), "a text", *option]) == 2
        assert f"{option[0]}: for causal-lm runs; this run does text-classification" in capsys.readouterr().err


def test_encoder_and_decoder_runs_are_refused_where_the_other_belongs(folder, tmp_path, tiny_preset, capsys):
    _saved_run(folder, tmp_path / "causal", chat=False)
    classifier = ka.AdapterModel.from_preset(tiny_preset, method="lora", num_classes=2, sequence_length=16)
    classifier.save_adapter(tmp_path / "classifier")
    with pytest.raises(ValueError, match="holds a causal-lm adapter of a decoder"):
        ka.AdapterModel.from_adapter(tmp_path / "causal" / "adapter")
    with pytest.raises(ValueError, match="holds a text-classification adapter; a causal LM loads a decoder's"):
        AdapterCausalLM.from_adapter(tmp_path / "classifier")
    with pytest.raises(ValueError, match="decoder runs load with keras_adapters.runs.generation.load_causal_lm_runs"):
        runs.load_runs([tmp_path / "classifier", tmp_path / "causal"])
    data = _write(tmp_path / "train.jsonl", RECORDS)
    with pytest.raises(ValueError, match="is causal-lm data, which trains an adapter on a decoder"):
        ka.train_classifier(data, tmp_path / "run")
    assert not (tmp_path / "run").exists()

    out = tmp_path / "out"
    for args, message in [
        (["--adapters", f"{tmp_path / 'classifier'},{tmp_path / 'causal'}"], "adapt an encoder and .*causal a decoder"),
        ([str(tmp_path / "causal"), "--serving-config", str(tmp_path / "config")], "--serving-config: not supported for causal-lm"),
        ([str(tmp_path / "causal"), "--quantize", "dynamic"], "--quantize: not supported for causal-lm exports"),
    ]:
        assert cli.main(["export", *args, "--format", "saved_model", "--output", str(out)]) == 2
        assert re.search(message, capsys.readouterr().err)
    assert not out.exists() and not (tmp_path / "config").exists()


def test_a_chat_adapter_loaded_beside_a_plain_model_warns_and_predict_reads_jsonl_prompts(folder, tmp_path, capsys):
    model = _saved_run(folder, tmp_path / "run", chat=True)
    plain = AdapterCausalLM.from_preset(folder, method=None)
    with pytest.warns(UserWarning, match="trained with chat=True.*set model.chat = True"):
        plain.load_adapter(tmp_path / "run" / "adapter")
    records = _write(tmp_path / "prompts.jsonl", RECORDS[:2])
    assert cli.main(["predict", str(tmp_path / "run"), "--file", str(records), "--max-new-tokens", "3"]) == 0
    expected = model.generate([r["prompt"] for r in RECORDS[:2]], max_new_tokens=3)
    assert capsys.readouterr().out.splitlines() == expected
