"""Causal-LM runs from the command line, on the tiny Llama: train writes a run
whose adapter reproduces the model, evaluate reports the perplexity that
`AdapterCausalLM.perplexity` computes and sacrebleu's BLEU/chrF of the
generations `predict` prints; what is not supported is refused by name."""

import json

import numpy as np
import pytest

from keras_adapters import cli
from keras_adapters.models.causal_lm import AdapterCausalLM
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
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
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
