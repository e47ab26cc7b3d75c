"""TF Serving's warm-up file: runs keep real inputs, export turns them into
`PredictionLog` records for every signature, and a fresh TensorFlow-only
process loading the version as TF Serving does (a TF1 session) replays each
record through the signature it names."""

import json
import shutil
import warnings

import numpy as np
import pytest
from tensorflow.core.protobuf import saved_model_pb2

import keras_adapters as ka
from keras_adapters import cli
from keras_adapters import tasks
from keras_adapters.runs import folder as runs
from keras_adapters.serving import warmup
from keras_adapters.serving.export import export_run_saved_model
from conftest import CLASS_WORDS
from conftest import serve_many
from conftest import squad_records
from conftest import topic_pairs
from conftest import write_conll
from conftest import write_pair_file
from conftest import write_squad


def signature_keys(version_dir):
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    return set(proto.meta_graphs[0].signature_def) - {"__saved_model_init_op"}


def replay(version_dir, tmp_path):
    """The warm-up records, each run in a fresh TF Serving-like process."""
    return serve_many(str(version_dir), {"warmup": True}, tmp_path, loader="session")


def test_each_task_samples_its_training_inputs(tmp_path):
    from conftest import write_class_folders

    folder = write_class_folders(tmp_path / "news", per_class=3)
    (text,) = tasks.get_task("text_classification").sample_inputs(folder, {}, count=4)
    first = {c: sorted((tmp_path / "news" / c).iterdir())[0].read_text() for c in sorted(CLASS_WORDS)}
    assert text[: len(first)] == list(first.values())[:4]  # one file of each class in turn
    sentences = tmp_path / "t.conll"
    write_conll(sentences, count=5)
    words = sentences.read_text().split("\n\n")[0].splitlines()
    (tagged,) = tasks.get_task("token_classification").sample_inputs(str(sentences), {}, count=3)
    assert tagged[0] == " ".join(line.split("\t")[0] for line in words) and len(tagged) == 3
    squad = write_squad(tmp_path / "q.json", count=6)
    questions, contexts = tasks.get_task("question_answering").sample_inputs(squad, {}, count=2)
    paragraph = squad_records(6)["data"][0]["paragraphs"][0]
    assert (questions[0], contexts[0]) == (paragraph["qas"][0]["question"], paragraph["context"])
    rows = topic_pairs(10)
    a, b = tasks.get_task("pair_classification").sample_inputs(
        write_pair_file(tmp_path / "p.jsonl", rows), {}, count=4)
    assert list(zip(a, b)) == [(r["text_a"], r["text_b"]) for r in rows[:4]]
    labelled = tmp_path / "m.jsonl"
    labelled.write_text("".join(json.dumps({"text": f"text {i}", "labels": ["a"]}) + "\n" for i in range(9)))
    assert tasks.get_task("multi_label_classification").sample_inputs(str(labelled), {}) == [
        [f"text {i}" for i in range(8)]]
    assert tasks.get_task("text_classification").sample_inputs("tfds:imdb_reviews", {}) is None


@pytest.fixture(scope="module")
def adapter_runs(tiny_preset, tmp_path_factory):
    """Three `keras-adapters train` runs of one epoch: news (folders), tagger (CoNLL), qa (SQuAD)."""
    from conftest import write_class_folders

    root = tmp_path_factory.mktemp("warm")
    data = {"news": write_class_folders(root / "news"), "tagger": write_conll(root / "t.conll"),
            "qa": write_squad(root / "q.json")}
    for name, method in (("news", "houlsby"), ("tagger", "lora"), ("qa", "houlsby")):
        assert cli.main(["train", str(data[name]), "-o", str(root / name), "--backbone", tiny_preset, "--method",
                         method, "--epochs", "1", "--batch-size", "8", "--sequence-length", "16",
                         "--precision", "float32", "--quiet"]) == 0
    return [root / name for name in data]


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_an_export_of_several_runs_warms_up_every_signature(adapter_runs, tmp_path, capsys):
    runs_ = adapter_runs
    kept = {runs.task_name(r): json.loads((r / "examples.json").read_text())["inputs"] for r in runs_}
    assert kept["qa"]["question"][0] == squad_records()["data"][0]["paragraphs"][0]["qas"][0]["question"]
    base = tmp_path / "serving" / "tasks"
    assert cli.main(["export", "--adapters", ",".join(map(str, runs_)), "--format", "saved_model",
                     "-o", str(base)]) == 0
    assert "warm-up requests" in capsys.readouterr().out
    responses = replay(base / "1", tmp_path)
    assert not [r for r in responses if "error" in r], [r["error"] for r in responses if "error" in r][:2]
    assert {r["signature"] for r in responses} == signature_keys(base / "1")  # every signature, nothing else
    assert {r["model"] for r in responses} == {"tasks"}
    for r in responses:
        assert len({len(v) for v in r["inputs"].values()}) == 1, r["inputs"].keys()  # one row count per request
        for field, texts in r["inputs"].items():
            if field in ("adapter", "token_ids", "segment_ids", "padding_mask"):
                continue
            # Real inputs: a routed row is one of its adapter's kept inputs; another request's, one of some run's.
            allowed = [kept[a][field] for a in r["inputs"]["adapter"]] if "adapter" in r["inputs"] else [
                sum((e.get(field, []) for e in kept.values()), [])] * len(texts)
            assert all(t in ok for t, ok in zip(texts, allowed)), (r["signature"], field)
    by_signature = {}
    for r in responses:
        by_signature.setdefault(r["signature"], []).append(len(r["inputs"]["token_ids" if "token_ids" in r["inputs"]
                                                                          else next(iter(r["inputs"]))]))
    assert by_signature["tag"] == [1, 8] and by_signature["answer"] == [1, 8]  # batch 1 and a small batch
    tagged = next(r for r in responses if r["signature"] == "tag" and len(r["inputs"]["text"]) == 8)
    assert len(tagged["outputs"]["num_entities"]) == 8


@pytest.mark.slow  # 16-21 s: the default run stays under 15 minutes
def test_a_routed_request_mixes_the_adapters_of_its_task(tiny_preset, tmp_path):
    model = ka.AdapterModel.from_preset(tiny_preset, num_classes=2, method="houlsby", sequence_length=16)
    model.add_adapter("spam", "lora", num_classes=3)
    examples = {"default": {"text": [f"the cup {i}" for i in range(5)]},
                "spam": {"text": [f"win a phone {i}" for i in range(5)]}}
    out = ka.export_multi_adapter_saved_model(model, tmp_path / "m", examples=examples)
    records = warmup.read_warmup_file(out)
    routed = [inputs for key, inputs in records if key == "classify"]
    assert [len(r["adapter"]) for r in routed] == [1, 8]
    assert list(routed[1]["adapter"]) == [b"default", b"spam"] * 4  # in turn: one backbone pass serves both
    assert list(routed[1]["text"][:2]) == [b"the cup 0", b"win a phone 0"]
    tokens = [inputs for key, inputs in records if key == "classify_token_ids"][1]
    assert tokens["token_ids"].dtype == np.int32 and tokens["token_ids"].shape == (8, 16)
    assert (tokens["padding_mask"].sum(axis=1) > 2).all()  # real texts, tokenized
    with pytest.raises(ValueError, match=r"examples for spam must hold one list of texts per input of its task \(text\)"):
        ka.export_multi_adapter_saved_model(model, tmp_path / "m", examples={"spam": {"txt": ["a"]}})
    no_examples = ka.export_multi_adapter_saved_model(model, tmp_path / "m", version=2)
    assert not (tmp_path / "m" / "2" / warmup.WARMUP_FILE).exists() and no_examples


def test_an_old_run_warms_up_from_its_data_or_says_why_not(token_run, tmp_path, monkeypatch):
    run = tmp_path / "old"
    shutil.copytree(token_run[0], run)
    (run / "examples.json").unlink()  # as 0.12 runs are
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = export_run_saved_model(str(run), tmp_path / "a")
    (key, first), *_ = warmup.read_warmup_file(out)
    words = open(token_run[1]).read().split("\n\n")[0].splitlines()
    assert first["text"][0].decode() == " ".join(w.split("\t")[0] for w in words)  # read from its training file
    config = json.loads((run / "train_config.json").read_text())
    (run / "train_config.json").write_text(json.dumps({**config, "data": str(tmp_path / "gone.conll")}))
    gone = "No warm-up requests for .*old: it keeps no examples.json and its training data .*gone.conll' is not where"
    with pytest.warns(UserWarning, match=gone):
        out = export_run_saved_model(str(run), tmp_path / "b")
    assert (tmp_path / "b" / "1" / "saved_model.pb").exists()  # exported all the same
    assert not (tmp_path / "b" / "1" / warmup.WARMUP_FILE).exists()
    assert cli.main(["export", str(token_run[0]), "--format", "saved_model", "-o", str(tmp_path / "c"),
                     "--no-warmup"]) == 0
    assert not (tmp_path / "c" / "1" / warmup.WARMUP_FILE).exists()
    monkeypatch.setattr(warmup, "MAX_RECORDS", 3)
    with pytest.raises(ValueError, match="4 warm-up requests; TF Serving reads at most 3"):
        export_run_saved_model(str(token_run[0]), tmp_path / "d")
    assert not (tmp_path / "d" / "1").exists()  # nothing half-written


def test_a_single_run_version_replays_in_a_fresh_server(token_run, tmp_path):
    base = tmp_path / "tagger"
    assert cli.main(["export", str(token_run[0]), "--format", "saved_model", "-o", str(base)]) == 0
    responses = replay(base / "1", tmp_path)
    assert [(r["signature"], len(next(iter(r["inputs"].values())))) for r in responses] == [
        ("serving_default", 1), ("serving_default", 8), ("serve_token_ids", 1), ("serve_token_ids", 8)]
    assert all("outputs" in r for r in responses), responses
    assert np.asarray(responses[3]["outputs"]["probabilities"]).shape[:2] == (8, 16)
