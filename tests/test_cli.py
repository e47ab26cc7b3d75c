"""`keras-adapters train / evaluate / predict` on a tiny preset and dataset."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import CLASS_WORDS
from conftest import cli_process
from conftest import write_class_folders

from keras_adapters import cli


@pytest.fixture(scope="module")
def run_dir(tiny_preset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_class_folders(root / "data", per_class=8)
    run = root / "run"
    code = cli.main([
        "train", str(data), "--output", str(run), "--backbone", tiny_preset, "--method", "lora",
        "--method-option", "rank=4", "--method-option", "use_dora=true",
        "--epochs", "2", "--batch-size", "4", "--sequence-length", "16", "--precision", "float32",
        "--validation-split", "0.25", "--quiet",
    ])
    assert code == 0
    return run, data


def test_train_prints_a_summary_and_fills_the_run(run_dir, capsys, tiny_preset, tmp_path):
    run, data = run_dir
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert (config["method"]["rank"], config["method"]["use_dora"]) == (4, True)
    code = cli.main([
        "train", str(data), "-o", str(tmp_path / "r2"), "--backbone", tiny_preset, "--method", "head",
        "--epochs", "1", "--batch-size", "8", "--sequence-length", "16", "--quiet",
        "--bucket-by-length",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "trained head in" in out and "examples/s" in out and "best val_accuracy" in out


def test_evaluate_json_has_the_metrics(run_dir, capsys):
    run, data = run_dir
    assert cli.main(["evaluate", str(run), str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "macro_f1", "loss", "num_examples"} <= set(result)
    assert result["num_examples"] == 24
    assert sum(map(sum, result["confusion_matrix"])) == 24
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation"]["accuracy"] == result["accuracy"]


def test_evaluate_report_and_png(run_dir, capsys):
    run, data = run_dir
    assert cli.main(["evaluate", str(run), str(data)]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "confusion matrix" in out
    for name in CLASS_WORDS:
        assert name in out
    png = run / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_on_a_folder_with_fewer_classes_maps_by_name(run_dir, tmp_path, capsys):
    run, _ = run_dir
    folder = write_class_folders(tmp_path / "sport_only", {"sport": CLASS_WORDS["sport"]}, per_class=3)
    assert cli.main(["evaluate", str(run), str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["per_class"]["sport"]["support"] == 3
    assert result["per_class"]["business"]["support"] == 0


def test_predict_texts_and_file(run_dir, tmp_path, capsys):
    run, _ = run_dir
    texts = tmp_path / "texts.txt"
    texts.write_text("the team won the cup\n\nthe bank profit rose\n")
    assert cli.main(["predict", str(run), "election vote today", "--file", str(texts), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    # The blank line is a text too, so answers stay in step with the file's lines.
    assert [r["text"] for r in results] == ["election vote today", "the team won the cup", "", "the bank profit rose"]
    for r in results:
        assert r["label"] in CLASS_WORDS
        assert abs(sum(r["probabilities"].values()) - 1) < 1e-4
    assert cli.main(["predict", str(run), "the match"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split("\t")[0] in CLASS_WORDS


def test_errors_exit_2_with_a_message(tmp_path, capsys, tiny_preset):
    assert cli.main([
        "train", str(tmp_path / "none"), "-o", str(tmp_path / "r"), "--backbone", tiny_preset, "--sequence-length", "16"
    ]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path / "no_run"), "hello"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["predict", str(tmp_path)]) == 2
    assert "No texts" in capsys.readouterr().err


def test_a_bad_method_option_names_the_fields(tmp_path, capsys, tiny_preset):
    code = cli.main(["train", str(tmp_path), "-o", str(tmp_path / "r"), "--method", "lora",
                     "--method-option", "rnak=4"])
    assert code == 2
    err = capsys.readouterr().err
    assert "rnak=4" in err and "'rank'" in err and "use_dora" in err
    assert not (tmp_path / "r").exists()


def test_console_script_is_installed():
    exe = os.path.join(os.path.dirname(sys.executable), "keras-adapters")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "train" in out.stdout and "evaluate" in out.stdout


def _train(data, output, preset, *extra):
    return cli.main([
        "train", str(data), "--output", str(output), "--preset", preset, "--epochs", "2",
        "--batch-size", "4", "--sequence-length", "16", "--precision", "float32", "--quiet", *extra,
    ])


@pytest.mark.slow  # 35-40 s; the fast suite must stay under 15 min
def test_fuse_trains_a_fusion_over_finished_runs(tiny_preset, tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=6)
    for name in ("first", "second"):
        assert _train(data, tmp_path / name, tiny_preset, "--method", "houlsby", "--seed", str(len(name))) == 0
    fused = tmp_path / "fused"
    assert _train(data, fused, "default", "--fuse", f"{tmp_path / 'first'},{tmp_path / 'second'}") == 0
    assert "trained a fusion of first, second" in capsys.readouterr().out
    config = json.loads((fused / "adapter" / "adapter_config.json").read_text())
    assert config["fusion"]["adapters"] == ["first", "second"] and config["name"] == "first_second_fusion"
    assert sorted(os.listdir(fused / "adapter" / "adapters")) == ["first", "second"]
    assert cli.main(["evaluate", str(fused), str(data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    texts = {path: path.read_text() for path in sorted(data.glob("*/*.txt"))}
    assert cli.main(["predict", str(fused), *texts.values(), "--json"]) == 0
    predicted = [row["label"] for row in json.loads(capsys.readouterr().out)]
    right = sum(label == path.parent.name for label, path in zip(predicted, texts))
    assert result["num_examples"] == 18 and result["accuracy"] == pytest.approx(right / 18)
    assert cli.main(["predict", str(fused), "the team won the cup", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["label"] in CLASS_WORDS
    assert cli.main(["export", str(fused), "--format", "saved_model", "--output", str(tmp_path / "sm")]) == 0
    # A fusion over runs on another checkpoint is refused.
    other = tmp_path / "other_preset"
    import keras_hub
    from conftest import VOCAB, tiny_backbone

    tiny_backbone(seed=9).save_to_preset(str(other))
    keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True), sequence_length=16
    ).save_to_preset(str(other))
    assert _train(data, tmp_path / "third", str(other), "--method", "houlsby") == 0
    code = _train(data, tmp_path / "bad", "default", "--fuse", f"{tmp_path / 'first'},{tmp_path / 'third'}")
    assert code == 2 and "different checkpoint" in capsys.readouterr().err


# --------------------------------------------- faults, in real processes
_process = cli_process


@pytest.mark.parametrize(
    "option, message",
    [
        (["--epochs", "-1"], "epochs must be a positive integer, got -1"),
        (["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
        (["--sequence-length", "0"], "sequence_length must be a positive integer, got 0"),
        (["--sequence-length", "100000"], "more than the 16 positions this backbone has"),
        (["--learning-rate", "-0.1"], "learning_rate must be a positive number"),
    ],
)
def test_impossible_options_are_refused_before_anything_loads(tiny_preset, tmp_path, option, message):
    data = write_class_folders(tmp_path / "data", per_class=3)
    result = _process(
        "train", data, "--output", tmp_path / "run", "--preset", tiny_preset, "--sequence-length", "16", *option
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_a_diverging_run_fails_and_saves_nothing_non_finite(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    result = _process(
        "train", data, "--output", run, "--preset", tiny_preset, "--method", "lora", "--epochs", "4",
        "--batch-size", "4", "--sequence-length", "16", "--learning-rate", "1e6", "--precision", "float32",
        "--quiet",
    )
    assert result.returncode == 2 and "Training diverged" in result.stderr, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())  # valid JSON: NaN written as null
    assert metrics["train"]["diverged"] is True
    losses = json.loads((run / "history.json").read_text())["loss"]
    finite = [value is not None and np.isfinite(value) for value in losses]
    # Training stops in the first non-finite epoch (TerminateOnNaN), not after all four.
    assert finite.count(False) == 1 and not finite[-1] and len(losses) < 4, losses
    if len(losses) == 1:
        assert "no adapter was saved" in result.stderr and not (run / "adapter").exists()
    else:  # the best earlier epoch's adapter is kept, and it is finite
        from safetensors.numpy import load_file

        assert "the adapter of epoch" in result.stderr
        tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
        assert tensors and all(np.isfinite(t).all() for t in tensors.values())


def test_predict_keeps_blank_lines_in_step_with_the_input(run_dir):
    run, _ = run_dir
    result = _process("predict", run, "--file", "-", stdin="the team won the cup\n\nbank profit rose\n")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip("\n").split("\n")
    assert len(lines) == 3 and lines[1].endswith("\t")  # the blank line's answer, text empty


@pytest.mark.slow  # the default suite must stay near 15 min; CI runs it
def test_a_second_train_on_a_run_in_use_is_refused_and_a_dead_holder_blocks_nothing(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=3)
    run = tmp_path / "run"
    run.mkdir()
    hold = (
        "import sys, time; from keras_adapters.runs.training import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ("train", data, "--output", run, "--preset", tiny_preset, "--sequence-length", "16",
                "--epochs", "1", "--batch-size", "4", "--validation-split", "0", "--quiet")
        refused = _process(*args)
        assert refused.returncode == 2
        assert f"is in use by another keras-adapters train (pid {holder.pid})" in refused.stderr
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
        resumed = _process(*args)  # the kernel dropped the dead holder's lock
        assert resumed.returncode == 0, resumed.stderr
        assert (run / "adapter" / "adapter_config.json").is_file()
    finally:
        holder.kill()


@pytest.mark.slow  # the default suite must stay near 15 min; CI runs it
def test_ctrl_c_stops_train_with_how_to_resume(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "keras_adapters.cli", "train", str(data), "--output", str(run), "--preset",
         tiny_preset, "--sequence-length", "16", "--epochs", "500", "--batch-size", "4", "--quiet"],
        stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    deadline = time.time() + 300
    while not (run / "backup").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)  # training has started once the first epoch is backed up
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted. Run the same command again to resume" in err and "Traceback" not in err


# ------------------------------------------------------------- text pairs
def _pair_run(preset, tmp_path_factory, epochs, method="full", learning_rate="5e-3"):
    from conftest import topic_pairs
    from conftest import write_pair_file

    root = tmp_path_factory.mktemp("pairs")
    data = write_pair_file(root / "pairs.jsonl", topic_pairs(96))
    run = root / "run"
    code = cli.main([
        "train", data, "--output", str(run), "--backbone", preset, "--method", method,
        "--learning-rate", learning_rate, "--epochs", str(epochs), "--batch-size", "8", "--sequence-length", "16",
        "--validation-split", "0",
        "--precision", "float32", "--quiet",
    ])
    assert code == 0
    return run, data


@pytest.fixture(scope="module")
def pair_run(minilm_preset, tmp_path_factory):
    """A pair run that learned its task: Houlsby adapters in all-MiniLM-L6-v2,
    8 epochs (it reaches 1.0 at epoch 3 or 4 for training seeds 0-3). The
    tiny random backbone is no fixture for learning this: fully fine-tuned, it
    stopped at 0.73 (two topics merged) in 8 of 9 runs (training seeds 0-4,
    40-60 epochs, learning rates 1e-3 to 5e-3), and twice as wide in 2 of 6."""
    return _pair_run(minilm_preset, tmp_path_factory, epochs=8, method="houlsby", learning_rate="1e-3")


@pytest.fixture(scope="module")
def short_pair_run(tiny_preset, tmp_path_factory):
    """A complete pair run, two epochs: for what reads a run, not what it learned."""
    return _pair_run(tiny_preset, tmp_path_factory, epochs=2)


@pytest.mark.slow  # its run trains MiniLM 8 epochs (about 30 s)
def test_pair_files_train_evaluate_and_learn_from_the_second_text(pair_run, capsys, tmp_path):
    run, data = pair_run
    assert json.loads((run / "train_config.json").read_text())["task"] == "pair_classification"
    assert cli.main(["evaluate", str(run), data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 96 and set(result["class_names"]) == set(CLASS_WORDS)
    # The label is the second text's topic: only a model reading text_b gets it right.
    assert result["accuracy"] >= 0.9 and result["macro_f1"] >= 0.9
    # Other columns, another format, labels matched by name.
    rows = [json.loads(line) for line in open(data)][:12]
    other = tmp_path / "other.csv"
    other.write_text("claim,evidence,gold\n" + "".join(f"{r['text_a']},{r['text_b']},{r['label']}\n" for r in rows))
    assert cli.main(["evaluate", str(run), str(other), "--text-a-key", "claim", "--text-b-key", "evidence",
                     "--label-key", "gold", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_examples"] == 12


@pytest.mark.slow  # its run trains MiniLM 8 epochs (about 30 s)
def test_predict_pairs_from_arguments_and_files(pair_run, capsys, tmp_path):
    run, _ = pair_run
    pairs = tmp_path / "unlabelled.tsv"
    pairs.write_text("text_a\ttext_b\nthe cup\ta bank profit\n")
    assert cli.main(["predict", str(run), "the vote", "a team goal", "--file", str(pairs), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [(r["text_a"], r["text_b"]) for r in results] == [("the vote", "a team goal"), ("the cup", "a bank profit")]
    from keras_adapters.runs import folder as runs

    model = runs.load_run(run)
    expected = model.predict((["the vote", "the cup"], ["a team goal", "a bank profit"]), verbose=0)
    assert [r["label"] for r in results] == [model.class_names[i] for i in expected.argmax(axis=1)]
    assert [r["probabilities"][r["label"]] for r in results] == pytest.approx(expected.max(axis=1), abs=1e-5)
    assert cli.main(["predict", str(run), "only one text"]) == 2
    assert "TEXT_A TEXT_B" in capsys.readouterr().err


def test_task_errors_name_the_fix(tiny_preset, text_folder, tmp_path, capsys):
    from conftest import topic_pairs
    from conftest import write_pair_file
    from conftest import write_squad

    pairs = write_pair_file(tmp_path / "p.jsonl", topic_pairs(8))
    common = ["--backbone", tiny_preset, "--epochs", "1", "--sequence-length", "16", "--quiet"]
    cases = [
        (["train", pairs, "-o", str(tmp_path / "a"), "--task", "text-classification"],
         "is a file; text classification reads a folder"),
        (["train", str(text_folder), "-o", str(tmp_path / "b"), "--task", "pair-classification"],
         "Pair classification reads a .jsonl, .csv or .tsv file"),
        (["train", str(text_folder), "-o", str(tmp_path / "c"), "--task", "question-answering"],
         "Question answering reads a SQuAD v1.1 JSON file"),
        (["train", pairs, "-o", str(tmp_path / "e"), "--stride", "4"], "only for question answering"),
        (["train", write_squad(tmp_path / "s.json", 8), "-o", str(tmp_path / "f"), "--stride", "12"],
         "stride must be at least 0 and below 7 (the sequence length 16 less 3"),
        (["train", pairs, "-o", str(tmp_path / "d"), "--text-b-key", "claim"], "no 'claim' column"),
    ]
    for argv, message in cases:
        assert cli.main(argv + common) == 2, argv
        assert message in capsys.readouterr().err


def test_export_a_pair_run(short_pair_run, capsys, tmp_path):
    import numpy as np
    import tensorflow as tf

    from keras_adapters.runs import folder as runs

    run, _ = short_pair_run
    assert cli.main(["export", str(run), "--format", "saved_model", "--output", str(tmp_path / "sm")]) == 0
    assert "serving_default (text_a, text_b)" in capsys.readouterr().out
    texts_a, texts_b = ["the vote", "the cup", ""], ["a team goal", "a bank profit", "a vote"]
    served = tf.saved_model.load(str(tmp_path / "sm" / "1")).signatures["serving_default"]
    got = served(text_a=tf.constant(texts_a), text_b=tf.constant(texts_b))
    expected = runs.load_run(run).predict((texts_a, texts_b), verbose=0)
    np.testing.assert_allclose(got["probabilities"].numpy(), expected, atol=1e-5)


# ------------------------------------------------------------- token tags
def test_conll_files_train_and_evaluate_with_entity_scores(token_run, capsys):
    from conftest import ENTITY_WORDS

    run, data = token_run
    assert json.loads((run / "train_config.json").read_text())["task"] == "token_classification"
    assert cli.main(["evaluate", str(run), data, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 96
    assert set(result["per_type"]) == set(ENTITY_WORDS.values())
    precision, recall = result["precision"], result["recall"]
    assert result["f1"] >= 0.9 and result["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert cli.main(["evaluate", str(run), data]) == 0
    assert "entity precision" in capsys.readouterr().out


def test_predict_finds_entities_with_character_offsets(token_run, capsys):
    from keras_adapters.runs import folder as runs

    run, _ = token_run
    text = "the minister fell, the bank rose"
    assert cli.main(["predict", str(run), text, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    expected = runs.load_run(run).predict_entities([text])[0]
    assert result["entities"] == expected
    for entity in expected:
        assert text[entity["start"] : entity["end"]] == entity["text"]
    assert [(e["type"], e["text"]) for e in expected] == [("PER", "minister"), ("ORG", "bank")]


@pytest.mark.slow  # the default suite must stay near 15 min; CI runs it
def test_squad_files_train_evaluate_predict_and_export(qa_run, capsys, tmp_path):
    from keras_adapters.runs import folder as runs

    run, data, test = qa_run
    assert json.loads((run / "train_config.json").read_text())["task"] == "question_answering"
    assert cli.main(["evaluate", str(run), test, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"exact_match", "f1", "num_examples"} and result["num_examples"] == 24
    assert result["exact_match"] >= 95 and result["f1"] >= result["exact_match"]
    assert cli.main(["evaluate", str(run), test]) == 0
    assert "exact match" in capsys.readouterr().out
    context = "the film won the great award today"
    assert cli.main(["predict", str(run), "the news", context, "--json"]) == 0
    (found,) = json.loads(capsys.readouterr().out)
    assert found == {"question": "the news", **runs.load_run(run).answer("the news", context)}
    assert context[found["start"] : found["end"]] == found["answer"] == "great award"
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "the news", "context": context}) + "\n")
    for source in (questions, test):
        assert cli.main(["predict", str(run), "--file", str(source)]) == 0
        assert capsys.readouterr().out.splitlines()[0].startswith("great award\t")
    assert cli.main(["predict", str(run), "the news"]) == 2
    assert "pass QUESTION CONTEXT" in capsys.readouterr().err
    assert cli.main(["export", str(run), "--format", "saved_model", "-o", str(tmp_path / "sm")]) == 0
    assert "question, context -> answer, start, end, score" in capsys.readouterr().out


def test_predict_files_answer_every_row_in_order_empty_texts_included(short_pair_run, qa_run, capsys, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [("the cup", "a bank profit"), ("the vote", ""), ("", "a team goal")]
    pairs.write_text("".join(json.dumps({"text_a": a, "text_b": b}) + "\n" for a, b in rows))
    assert cli.main(["predict", str(short_pair_run[0]), "--file", str(pairs), "--json"]) == 0
    assert [(r["text_a"], r["text_b"]) for r in json.loads(capsys.readouterr().out)] == rows
    questions = tmp_path / "q.csv"
    questions.write_text("question,context\nthe news,the film won the great award today\nthe news,\n,the cup\n")
    assert cli.main(["predict", str(qa_run[0]), "--file", str(questions), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [f["question"] for f in found] == ["the news", "the news", ""]
    assert found[0]["answer"] == "great award" and found[1] == {"question": "the news", "answer": "", "start": 0,
                                                               "end": 0, "score": 0.0}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["evaluate", "RUN", "DATA", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
        (["predict", "RUN", "text", "--batch-size", "-3"], "argument --batch-size: must be at least 1, got -3"),
        (["export", "RUN", "--format", "saved_model", "-o", "OUT", "--version", "-1"],
         "argument --version: must be at least 0, got -1"),
        (["export", "RUN", "--format", "tflite", "-o", "OUT", "--sequence-length", "x"],
         "argument --sequence-length: must be a whole number, got 'x'"),
    ],
)
def test_impossible_numbers_exit_2_before_anything_loads(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        cli.main([str(tmp_path / a) if a in ("RUN", "DATA", "OUT") else a for a in argv])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "OUT").exists()


def test_a_tflite_length_beyond_the_backbone_exits_2(run_dir, capsys, tmp_path):
    run, _ = run_dir
    out = tmp_path / "lite"
    assert cli.main(["export", str(run), "--format", "tflite", "-o", str(out), "--sequence-length", "600"]) == 2
    assert "sequence_length 600 does not fit this backbone: use 3 to 16" in capsys.readouterr().err
    assert not out.exists()


def test_evaluate_prints_its_results_when_the_run_folder_is_read_only(run_dir, capsys, monkeypatch):
    from keras_adapters.runs import folder as runs

    run, data = run_dir

    def read_only(*args, **kwargs):  # as root, chmod cannot make a folder read-only
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(runs, "atomic_write", read_only)
    assert cli.main(["evaluate", str(run), str(data), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["num_examples"] == 24
    assert f"were not saved in {run} (Read-only file system)" in captured.err


@pytest.mark.slow  # the default suite must stay near 15 min; CI runs it
def test_train_into_a_log_prints_one_line_per_epoch(tiny_preset, tmp_path):
    data = write_class_folders(tmp_path / "data", per_class=6)
    result = _process(
        "train", data, "--output", tmp_path / "run", "--preset", tiny_preset, "--method", "lora", "--epochs", "3",
        "--batch-size", "4", "--sequence-length", "16", "--precision", "float32",
    )
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stdout and "\x1b" not in result.stdout  # no progress bar in a pipe
    per_epoch = [line for line in result.stdout.splitlines() if " - loss: " in line]
    assert len(per_epoch) == 3 and all("val_accuracy: " in line for line in per_epoch), result.stdout


@pytest.mark.slow  # the default suite must stay near 15 min; CI runs it
def test_rerunning_a_finished_train_keeps_it(tiny_preset, tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    assert _train(data, run, tiny_preset, "--method", "lora") == 0
    assert cli.main(["evaluate", str(run), str(data), "--json"]) == 0
    capsys.readouterr()
    files = {name: (run / name).read_bytes() for name in ("metrics.json", "history.json")}
    weights = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert _train(data, run, tiny_preset, "--method", "lora") == 0
    assert "already holds this run, complete (2 epochs" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in files} == files  # evaluation kept, nothing retrained
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == weights
    assert _train(data, run, tiny_preset, "--method", "lora", "--overwrite") == 0
    assert "evaluation" not in json.loads((run / "metrics.json").read_text())  # that adapter is gone


def test_a_data_error_leaves_no_run_folder(tiny_preset, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"text_a": "a", "text_b": "b", "label": "x"}\n{"text_a": "a", "text_b": "b", "label": 1.5}\n')
    run = tmp_path / "runs" / "pairs"
    assert _train(data, run, tiny_preset) == 2
    assert "pairs.jsonl:2: the 'label' field is 1.5" in capsys.readouterr().err
    assert not run.exists()
    run.mkdir(parents=True)
    (run / "notes.txt").write_text("mine")  # a folder the user made is left as it was
    assert _train(data, run, tiny_preset) == 2
    assert sorted(os.listdir(run)) == [".lock", "notes.txt"]


@pytest.mark.parametrize("limit_kb, what", [
    pytest.param(8, "the best adapter of epoch 1", marks=pytest.mark.slow),  # 30-40 s each
    pytest.param(100, "the training state of epoch 1", marks=pytest.mark.slow),
])
def test_a_full_disk_stops_train_cleanly_and_the_rerun_resumes(tiny_preset, tmp_path, limit_kb, what):
    import resource

    data = write_class_folders(tmp_path / "data", per_class=4)
    run = tmp_path / "run"
    argv = ["train", data, "--output", run, "--preset", tiny_preset, "--method", "lora", "--epochs", "2",
            "--batch-size", "4", "--sequence-length", "16", "--precision", "float32", "--quiet"]
    limit = limit_kb * 1024  # each file may grow to this size: a disk that fills while writing
    full = subprocess.run(
        [sys.executable, "-m", "keras_adapters.cli", *map(str, argv)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert full.returncode == 2, full.stderr  # not 1 (a traceback) nor -11 (h5py's crash)
    assert f"Could not write {what}" in full.stderr and "is the disk full?" in full.stderr
    assert "Traceback" not in full.stderr
    again = _process(*argv)
    assert again.returncode == 0, again.stderr
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 2
