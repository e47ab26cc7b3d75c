"""SavedModel and TFLite export, checked in a fresh TensorFlow-only process."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import serve
from conftest import serve_many
from conftest import LABELS
from conftest import TEXTS
from conftest import randomize_adapter_weights

import keras_adapters as ka
from keras_adapters.serving import export

RANDOM_BYTES = np.random.default_rng(11).bytes(4096)  # NULs, invalid UTF-8, control bytes
MEGABYTE = ("the team won the cup " * 50_000)[:1_000_000]
#: Odd texts; the fourth has the same first tokens as the 1 MB one (and the same adapter when routed).
ODD_TEXTS_HEX = [RANDOM_BYTES.hex(), MEGABYTE.encode().hex(), b"".hex(), MEGABYTE[:2000].encode().hex(),
                 b"the \xff\xfe team \xc3".hex()]
BIG_BATCH = 4096


def _trained(preset, method, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = ka.AdapterTextClassifier.from_preset(
        preset, num_classes=4, method=method, sequence_length=16,
        class_names=["sport", "business", "tech", "politics"], **kwargs,
    )
    model.fit(TEXTS, LABELS, epochs=3, batch_size=4, verbose=0)
    return model


@pytest.fixture(scope="module")
def houlsby_export(tiny_preset, tmp_path_factory):
    model = _trained(tiny_preset, "houlsby")
    out = ka.export_saved_model(model, str(tmp_path_factory.mktemp("sm") / "houlsby"), version=3)
    return model, out


def _ops_allowed(ops):
    """Ops that are neither core TensorFlow nor tensorflow-text."""
    from tensorflow.python.framework import op_def_registry

    import tensorflow_text  # noqa: F401

    return [op for op in ops if op_def_registry.get(op) is None]


def test_saved_model_layout_and_fresh_process_outputs(houlsby_export, tmp_path):
    model, out = houlsby_export
    assert out.endswith(os.path.join("houlsby", "3"))
    assert {"saved_model.pb", "variables"} <= set(os.listdir(out))
    # Each variable stored once (keras.export.ExportArchive stores them twice).
    stored = [n for n, _ in tf.train.list_variables(os.path.join(out, "variables", "variables"))]
    assert len(stored) - 1 <= len(model.variables)
    texts = TEXTS + ["unseen words entirely", "the cup"]
    expected = model.predict(texts, verbose=0)
    # Loaded into a session, as TF Serving's C++ loader does.
    response = serve(out, "serving_default", {"text": texts}, {}, tmp_path, loader="session")
    assert response["foreign_modules"] == []
    np.testing.assert_allclose(response["outputs"]["probabilities"], expected, atol=1e-5)
    assert response["outputs"]["label_id"] == expected.argmax(axis=1).tolist()
    assert response["outputs"]["label"] == [model.class_names[i] for i in expected.argmax(axis=1)]
    # Every op is core TensorFlow or tensorflow-text: nothing needs Python/Keras.
    assert _ops_allowed(response["ops"]) == []
    assert not {"PyFunc", "EagerPyFunc"} & set(response["ops"])


def test_token_signature_matches(houlsby_export, tmp_path):
    model, out = houlsby_export
    tokens = {k: np.asarray(v).astype("int32").tolist() for k, v in model.preprocessor(TEXTS).items()}
    response = serve(out, "serve_token_ids", tokens, {k: "int32" for k in tokens}, tmp_path)
    expected = model.predict(TEXTS, verbose=0)
    np.testing.assert_allclose(response["outputs"]["probabilities"], expected, atol=1e-5)


def test_signatures_have_the_documented_shapes(houlsby_export):
    _, out = houlsby_export
    loaded = tf.saved_model.load(out)
    fn = loaded.signatures["serving_default"]
    (spec,) = fn.structured_input_signature[1].values()
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    outputs = fn.structured_outputs
    assert outputs["probabilities"].shape.as_list() == [None, 4]
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["label_id"].dtype in (tf.int32, tf.int64)
    assert outputs["label"].dtype == tf.string
    tokens = loaded.signatures["serve_token_ids"].structured_input_signature[1]
    assert sorted(tokens) == ["padding_mask", "segment_ids", "token_ids"]
    assert all(s.dtype == tf.int32 and s.shape.as_list() == [None, None] for s in tokens.values())
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", out, "--all"], capture_output=True, text=True, timeout=300)
    assert "signature_def['serving_default']" in shown.stdout
    assert "signature_def['serve_token_ids']" in shown.stdout


@pytest.mark.parametrize("method", ["lora", pytest.param("ia3", marks=pytest.mark.slow)])
def test_lora_and_ia3_export_merged(tiny_preset, tmp_path, method):
    model = _trained(tiny_preset, method, seed=1)
    expected = model.predict(TEXTS, verbose=0)
    out = ka.export_saved_model(model, str(tmp_path / "m"))
    # The model given is untouched; the export holds no adapter weights.
    assert model.adapter_names == ["default"] and model.merged_adapter is None
    unmerged = ka.export_saved_model(model, str(tmp_path / "u"), merge=False)
    adapter_values = ka.parameter_report(model)["groups"]["adapter"]["total"]
    # LoRA r8 on 4 attention projections (16 -> 16) and the FFN (16 -> 32 -> 16), in 2 layers.
    assert adapter_values == (2 * 8 * (4 * 32 + 2 * 48) if method == "lora" else 2 * (16 + 16 + 32))
    assert _stored_values(unmerged) - _stored_values(out) == adapter_values
    response = serve(out, "serving_default", {"text": TEXTS}, {}, tmp_path)
    np.testing.assert_allclose(response["outputs"]["probabilities"], expected, atol=1e-4)


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
@pytest.mark.parametrize("method", ["prompt", "mam", "bitfit", "parallel", "compacter++"])
def test_new_methods_export_to_saved_model_and_tflite(tiny_preset, tmp_path, method):
    config = ka.PromptConfig(num_virtual_tokens=3) if method == "prompt" else "bitfit"
    model = _trained(tiny_preset, config, seed=2, pooling="mean")
    expected = model.predict(TEXTS, verbose=0)
    out = ka.export_saved_model(model, str(tmp_path / "m"))
    response = serve(out, "serving_default", {"text": TEXTS}, {}, tmp_path)
    np.testing.assert_allclose(response["outputs"]["probabilities"], expected, atol=1e-5)
    lite = ka.export_tflite(model, str(tmp_path / "lite"))
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS).items()}
    np.testing.assert_allclose(export.run_tflite(export.tflite_signature_runner(lite), tokens), expected, atol=1e-4)


def _stored_values(path):
    entries = tf.train.list_variables(os.path.join(path, "variables", "variables"))
    return sum(int(np.prod(shape)) for name, shape in entries if name != "_CHECKPOINTABLE_OBJECT_GRAPH")


@pytest.fixture(scope="module")
def two_tasks(tiny_preset):
    """Houlsby "news" (4 classes, 16 tokens) and LoRA "topics" (3 classes,
    texts cut to 5 tokens) on one backbone, with weights far from their
    initial values so that every task and every text gives its own output."""
    from conftest import randomize_adapter_weights

    keras.utils.set_random_seed(2)
    model = ka.AdapterTextClassifier.from_preset(tiny_preset, method=None, sequence_length=16)
    model.add_adapter("news", "houlsby", num_classes=4)
    model.add_adapter("topics", "lora", num_classes=3)
    randomize_adapter_weights(model.backbone, scale=0.3)
    for head in model.heads.values():
        head.logits.kernel.assign(np.random.default_rng(0).standard_normal(head.logits.kernel.shape))
    model.heads["topics"].sequence_length = 5
    return model


def _own_outputs(model, name, tmp_path):
    """The task's own single-task SavedModel (from its adapter folder) on TEXTS."""
    model.save_adapter(str(tmp_path / f"adapter_{name}"), name=name)
    alone = ka.AdapterTextClassifier.from_adapter(str(tmp_path / f"adapter_{name}"))
    single = ka.export_saved_model(alone, str(tmp_path / f"single_{name}"), merge=False)
    outputs = tf.saved_model.load(single).signatures["serving_default"](text=tf.constant(TEXTS))
    return single, {k: v.numpy() for k, v in outputs.items()}


#: Which task each row of TEXTS is sent to in the routed requests.
ROWS = ["topics", "news", "news", "topics", "news", "topics", "topics", "news"]


@pytest.mark.slow  # moved to keep the default suite under 15 min; CI runs it
def test_multi_adapter_export_serves_every_task_from_one_backbone(two_tasks, tmp_path):
    model = two_tasks
    singles, own = {}, {}
    for name in ("news", "topics"):
        singles[name], own[name] = _own_outputs(model, name, tmp_path)
    model.set_active_adapters("topics")
    keras_topics = model.predict(TEXTS, verbose=0)  # 16 tokens: not what the task was trained on
    assert np.abs(keras_topics - own["topics"]["probabilities"]).max() > 1e-3
    out = ka.export_multi_adapter_saved_model(model, str(tmp_path / "multi"))
    assert model.active_adapters == "topics"  # restored
    tokens = {k: np.asarray(v).astype("int32").tolist() for k, v in model.preprocessor(TEXTS).items()}
    int32 = {k: "int32" for k in tokens}
    requests = [
        {"signature": "classify_news", "inputs": {"text": TEXTS}},
        {"signature": "classify_topics", "inputs": {"text": TEXTS}},
        {"signature": "serving_default", "inputs": {"text": TEXTS}},
        {"signature": "classify", "inputs": {"text": TEXTS, "adapter": ROWS}},
        {"signature": "classify_token_ids", "inputs": {**tokens, "adapter": ROWS}, "dtypes": int32},
        {"signature": "classify", "inputs": {"text": [], "adapter": []}},
        {"signature": "classify", "inputs": {"text": TEXTS[:2], "adapter": ["news", "weather"]}},
        {"signature": "classify", "inputs": {"text": TEXTS[:2], "adapter": ["news"]}},
    ]
    responses = serve_many(out, requests, tmp_path, loader="session")  # as TF Serving loads it
    news, topics, default, routed, routed_tokens, empty, unknown, short = responses
    for name, response in (("news", news), ("topics", topics), ("news", default)):
        np.testing.assert_allclose(response["outputs"]["probabilities"], own[name]["probabilities"], atol=1e-5)

    # Each row of one mixed batch: its task's own SavedModel, zeros past its classes.
    probabilities = np.asarray(routed["outputs"]["probabilities"])
    assert probabilities.shape == (8, 4)
    for i, name in enumerate(ROWS):
        k = own[name]["probabilities"].shape[1]
        np.testing.assert_allclose(probabilities[i, :k], own[name]["probabilities"][i], atol=1e-5)
        assert np.all(probabilities[i, k:] == 0)
        assert routed["outputs"]["label"][i] == own[name]["label"][i].decode()
    # Token ids (16 tokens for every row) against the Keras model, adapter by adapter.
    for i, name in enumerate(ROWS):
        model.set_active_adapters(name)
        expected = model.predict({k: np.asarray(v[i : i + 1]) for k, v in tokens.items()}, verbose=0)[0]
        np.testing.assert_allclose(routed_tokens["outputs"]["probabilities"][i][: len(expected)], expected, atol=1e-5)
    assert empty["outputs"] == {"probabilities": [], "label_id": [], "label": []}
    assert "Unknown adapter name(s): weather" in unknown["error"] and "serves: news, topics" in unknown["error"]
    assert "one adapter name per input row" in short["error"]

    # One backbone plus the tasks' own weights (stacked, with at most one identity
    # entry per stack), not one backbone per task.
    backbone = sum(int(np.prod(w.shape)) for w in model.state.original_weights)
    own = sum(int(np.prod(w.shape)) for w in model.variables) - backbone
    assert backbone + own <= _stored_values(out) <= backbone + 2 * own
    assert _stored_values(out) < sum(_stored_values(p) for p in singles.values())


def _odd_requests(signature, names=None, tokens=None):
    """Odd texts, an empty batch and a 4,096-row batch for one signature,
    then TEXTS as the reference for the big batch (whose rows repeat TEXTS)."""
    rows = lambda n: {"adapter": [names[i % len(names)] for i in range(n)]} if names else {}  # noqa: E731
    if tokens is not None:
        width = len(tokens["token_ids"][0])
        int32 = {k: "int32" for k in tokens}
        repeat = {k: [v[i % len(TEXTS)] for i in range(BIG_BATCH)] for k, v in tokens.items()}
        return [
            {"signature": signature, "inputs": {k: [] for k in tokens} | rows(0), "dtypes": int32,
             "shapes": {k: [0, width] for k in tokens}},
            {"signature": signature, "inputs": repeat | rows(BIG_BATCH), "dtypes": int32},
            {"signature": signature, "inputs": tokens | rows(len(TEXTS)), "dtypes": int32},
        ]
    return [
        {"signature": signature, "inputs": {"text": ODD_TEXTS_HEX} | rows(len(ODD_TEXTS_HEX)),
         "dtypes": {"text": "bytes_hex"}},
        {"signature": signature, "inputs": {"text": []} | rows(0)},
        {"signature": signature, "inputs": {"text": [TEXTS[i % len(TEXTS)] for i in range(BIG_BATCH)]}
         | rows(BIG_BATCH)},
        {"signature": signature, "inputs": {"text": TEXTS} | rows(len(TEXTS))},
    ]


def _odd_answer_problems(responses, class_names):
    """What is wrong with one signature's answers to `_odd_requests` (empty when all is right)."""
    errors = [r["error"] for r in responses if "error" in r]
    if errors:
        return [f"error: {e[:300]}" for e in errors]
    *odd, empty, big, reference = (r["outputs"] for r in responses)
    problems = []
    if not empty or any(v != [] for v in empty.values()):
        problems.append(f"empty batch answered {empty}")
    big_p, ref_p = np.asarray(big["probabilities"]), np.asarray(reference["probabilities"])
    if big_p.shape[0] != BIG_BATCH or not np.allclose(big_p, np.tile(ref_p, (BIG_BATCH // len(TEXTS), 1)), atol=1e-5):
        problems.append(f"the {BIG_BATCH}-row batch differs from the same texts sent alone")
    if odd:
        probabilities = np.asarray(odd[0]["probabilities"])
        if probabilities.shape[0] != len(ODD_TEXTS_HEX) or not np.isfinite(probabilities).all():
            problems.append(f"odd texts answered {probabilities}")
        # The 1 MB text is cut before tokenizing: it reads as its first 2,000 characters do.
        elif not np.allclose(probabilities[1], probabilities[3], atol=1e-6):
            problems.append("the 1 MB text is not read as its first 2,000 characters")
        if not set(odd[0]["label"]) <= class_names:
            problems.append(f"labels {odd[0]['label']} outside {sorted(class_names)}")
    return problems


@pytest.mark.slow
def test_every_signature_answers_odd_inputs(houlsby_export, two_tasks, tmp_path):
    model, single = houlsby_export
    tokens = {k: np.asarray(v).astype("int32").tolist() for k, v in model.preprocessor(TEXTS).items()}
    multi = ka.export_multi_adapter_saved_model(two_tasks, str(tmp_path / "multi"))
    names = ["news", "topics"]
    cases = {
        single: [("serving_default", None, None), ("serve_token_ids", None, tokens)],
        multi: [("classify_news", None, None), ("classify_topics", None, None), ("serving_default", None, None),
                ("classify", names, None), ("classify_token_ids", names, tokens)],
    }
    class_names = set(model.class_names) | {n for h in two_tasks.heads.values() for n in h.label_names()} | {""}
    problems = {}
    for export_name, (out, signatures) in zip(("single", "multi"), cases.items()):
        requests = [_odd_requests(*case) for case in signatures]
        responses = serve_many(out, [r for rs in requests for r in rs], tmp_path, loader="session")
        for (signature, *_), asked in zip(signatures, requests):
            problems[f"{export_name}:{signature}"] = _odd_answer_problems(responses[: len(asked)], class_names)
            responses = responses[len(asked):]
    assert len(problems) == 7
    assert all(not p for p in problems.values()), problems


def test_routed_tflite_matches_each_task(two_tasks, tmp_path):
    model = two_tasks
    path = ka.export_tflite(model, str(tmp_path / "lite"), names=["news", "topics"])
    adapters = json.loads(open(os.path.join(tmp_path, "lite", "adapters.json")).read())["adapters"]
    assert [(a["adapter_id"], a["name"], len(a["labels"]), a["sequence_length"]) for a in adapters] == [
        (0, "news", 4, 16),
        (1, "topics", 3, 5),
    ]
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS).items()}
    ids = ka.Route("news", "topics").ids(ROWS)
    lite = export.run_tflite(export.tflite_signature_runner(path), {**tokens, "adapter_id": ids})
    assert lite.shape == (8, 4)
    for i, name in enumerate(ROWS):
        model.set_active_adapters(name)
        expected = model.predict({k: v[i : i + 1] for k, v in tokens.items()}, verbose=0)[0]
        np.testing.assert_allclose(lite[i, : len(expected)], expected, atol=1e-5)
        assert np.all(lite[i, len(expected) :] == 0)


def test_multi_adapter_refuses_full_fine_tuning(tiny_preset, tmp_path):
    model = _trained(tiny_preset, "full")
    with pytest.raises(ValueError, match="cannot share one"):
        ka.export_multi_adapter_saved_model(model, str(tmp_path / "multi"))


def test_existing_version_is_not_overwritten(houlsby_export):
    model, out = houlsby_export
    with pytest.raises(FileExistsError, match="versions are immutable"):
        ka.export_saved_model(model, os.path.dirname(out), version=3)


def test_tflite_matches_the_saved_model(houlsby_export, tmp_path):
    model, saved = houlsby_export
    path = ka.export_tflite(model, str(tmp_path / "lite"))
    folder = os.path.dirname(path)
    assert sorted(os.listdir(folder)) == ["labels.txt", "model.tflite", "vocab.txt"]
    assert open(os.path.join(folder, "labels.txt")).read().split() == model.class_names
    assert open(os.path.join(folder, "vocab.txt")).read().split("\n")[:3] == ["[PAD]", "[UNK]", "[CLS]"]
    runner = export.tflite_signature_runner(path)
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS).items()}
    lite = export.run_tflite(runner, tokens)
    reference = tf.saved_model.load(saved).signatures["serving_default"](text=tf.constant(TEXTS))
    np.testing.assert_allclose(lite, reference["probabilities"].numpy(), atol=1e-5)


@pytest.mark.slow
def test_dynamic_tflite_quantizes_the_weights(tmp_path):
    from conftest import write_tiny_preset

    # TFLite leaves weights under 1,024 values in float: hidden 32 x 64 gives feedforward kernels of 2,048.
    preset = write_tiny_preset(tmp_path / "wider", hidden_dim=32, intermediate_dim=64)
    model = _trained(preset, "houlsby")
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS).items()}
    expected = model.predict(tokens, verbose=0)
    outputs = {}
    for quantize in ("none", "dynamic"):
        path = ka.export_tflite(model, str(tmp_path / quantize), quantize=quantize)
        interpreter = tf.lite.Interpreter(model_path=path)
        int8 = [t for t in interpreter.get_tensor_details() if t["dtype"] == np.int8]
        assert bool(int8) == (quantize == "dynamic"), quantize
        outputs[quantize] = export.run_tflite(export.tflite_signature_runner(path), tokens)
    np.testing.assert_allclose(outputs["none"], expected, atol=1e-5)
    # int8 weights move the probabilities a little, and only a little.
    error = np.abs(outputs["dynamic"] - expected).max()
    assert 1e-6 < error < 2e-2, error
    assert (outputs["dynamic"].argmax(1) == expected.argmax(1)).mean() >= 0.75


@pytest.mark.slow  # ~50 s; the fast suite must stay under 15 min
def test_cli_export_both_formats(tiny_preset, tmp_path, capsys):
    from conftest import write_class_folders

    from keras_adapters import cli

    data = write_class_folders(tmp_path / "data", per_class=4)
    for name, method in (("run_a", "houlsby"), ("Run-B", "lora")):
        assert cli.main([
            "train", str(data), "-o", str(tmp_path / name), "--backbone", tiny_preset, "--method", method,
            "--epochs", "1", "--batch-size", "4", "--sequence-length", "16", "--quiet",
        ]) == 0
    assert cli.main(["export", str(tmp_path / "run_a"), "--format", "saved_model", "-o", str(tmp_path / "sm")]) == 0
    assert os.path.isfile(tmp_path / "sm" / "1" / "saved_model.pb")
    both = f"{tmp_path / 'run_a'},{tmp_path / 'Run-B'}"
    capsys.readouterr()
    assert cli.main(["export", "--adapters", both, "--format", "saved_model", "-o", str(tmp_path / "multi"),
                     "--version", "2"]) == 0
    assert "classify (text, adapter: one of run_a, run_b)" in capsys.readouterr().out
    loaded = tf.saved_model.load(str(tmp_path / "multi" / "2"))
    assert {"classify", "classify_token_ids", "classify_run_a", "classify_run_b", "serving_default"} <= set(
        loaded.signatures
    )
    # A row names its run by the folder's name or by the adapter's (signature) name.
    names = tf.constant(["run_a", "Run-B", "run_b"])
    routed = loaded.signatures["classify"](text=tf.constant(TEXTS[:3]), adapter=names)
    for i, name in enumerate(["run_a", "run_b", "run_b"]):
        own = loaded.signatures[f"classify_{name}"](text=tf.constant(TEXTS[i : i + 1]))
        np.testing.assert_allclose(routed["probabilities"][i], own["probabilities"][0], atol=1e-6)
    assert cli.main(["export", "--adapters", both, "--format", "saved_model", "-o", str(tmp_path / "half"),
                     "--precision", "bfloat16"]) == 0
    half = tf.saved_model.load(str(tmp_path / "half" / "1")).signatures["classify"](text=tf.constant(TEXTS[:3]),
                                                                                    adapter=names)
    assert half["probabilities"].dtype == tf.float32
    gap = np.abs(half["probabilities"].numpy() - routed["probabilities"].numpy()).max()
    assert 0 < gap < 3e-2, gap
    assert cli.main(["export", "--adapters", both, "--format", "saved_model", "-o", str(tmp_path / "lean"),
                     "--no-task-signatures"]) == 0
    lean = tf.saved_model.load(str(tmp_path / "lean" / "1"))
    assert set(lean.signatures) == {"classify", "classify_token_ids", "serving_default"}
    again = lean.signatures["serving_default"](text=tf.constant(TEXTS[:3]), adapter=names)
    np.testing.assert_allclose(again["probabilities"], routed["probabilities"], atol=1e-6)
    assert cli.main([
        "export", str(tmp_path / "Run-B"), "--format", "tflite", "-o", str(tmp_path / "lite"),
        "--quantize", "dynamic", "--sequence-length", "16",
    ]) == 0
    assert "TFLite model written" in capsys.readouterr().out
    assert cli.main(["export", "--adapters", both, "--format", "tflite", "-o", str(tmp_path / "lite2")]) == 0
    assert "adapters.json (adapter_id 0.. = run_a, run_b)" in capsys.readouterr().out
    assert cli.main(["export", str(tmp_path / "run_a"), "--format", "tflite", "-o", str(tmp_path / "lite3"),
                     "--precision", "bfloat16"]) == 2
    assert "--precision bfloat16 is for --format saved_model" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "lite3")
    assert sorted(os.listdir(tmp_path / "lite2")) == ["adapters.json", "model.tflite", "vocab.txt"]
    assert cli.main(["export", "--format", "tflite", "-o", str(tmp_path / "x")]) == 2


def test_a_failed_export_leaves_no_version_behind(houlsby_export, tmp_path, monkeypatch):
    model, _ = houlsby_export
    real_save = tf.saved_model.save

    def dies_half_way(module, path, signatures=None):
        real_save(module, path, signatures=signatures)
        raise KeyboardInterrupt  # as if killed after writing the files

    monkeypatch.setattr(tf.saved_model, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        ka.export_saved_model(model, str(tmp_path / "m"))
    assert os.listdir(tmp_path / "m") == []  # neither 1/ nor a temporary folder
    monkeypatch.setattr(tf.saved_model, "save", real_save)
    (tmp_path / "m" / ".tmp-1-stale").mkdir()  # what a kill -9 of an older release leaves: removed
    out = ka.export_saved_model(model, str(tmp_path / "m"))
    assert sorted(os.listdir(tmp_path / "m")) == ["1"]
    assert os.path.isfile(os.path.join(out, "saved_model.pb"))


# ------------------------------------------------------------- text pairs
PAIRS = (TEXTS[:6], ["the cup", "bank profit", "", "the vote", "a goal " * 40, "chip"])


def _pair_model(preset):
    from conftest import randomize_adapter_weights

    model = ka.AdapterTextClassifier.from_preset(
        preset, num_classes=3, method="houlsby", sequence_length=16, pooling="mean",
        task="pair_classification", class_names=["supports", "refutes", "not enough info"],
    )
    randomize_adapter_weights(model.backbone, scale=0.5)
    kernel = model.heads["default"].logits.kernel  # away from ~0, so outputs differ by input
    kernel.assign(np.random.default_rng(0).normal(size=kernel.shape).astype("float32"))
    return model


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_pair_signatures_take_two_texts_and_match_keras(tiny_preset, tmp_path):
    model = _pair_model(tiny_preset)
    out = ka.export_saved_model(model, str(tmp_path / "pairs"))
    expected = model.predict(PAIRS, verbose=0)
    swapped = model.predict((PAIRS[0], PAIRS[1][::-1]), verbose=0)
    assert np.abs(swapped - expected).max() > 1e-3  # text_b matters, so the check below can fail
    tokens = {k: np.asarray(v).astype("int32").tolist() for k, v in model.preprocessor(PAIRS, y=None).items()}
    odd = [bytes.fromhex(h) for h in ODD_TEXTS_HEX]
    requests = [
        {"signature": "serving_default", "inputs": {"text_a": PAIRS[0], "text_b": PAIRS[1]}},
        {"signature": "serve_token_ids", "inputs": tokens, "dtypes": {k: "int32" for k in tokens}},
        {"signature": "serving_default", "inputs": {"text_a": [o.hex() for o in odd], "text_b": ODD_TEXTS_HEX[::-1]},
         "dtypes": {"text_a": "bytes_hex", "text_b": "bytes_hex"}},
        {"signature": "serving_default", "inputs": {"text_a": [], "text_b": []}},
        {"signature": "serving_default", "inputs": {"text_a": PAIRS[0][:2], "text_b": PAIRS[1][:1]}},
    ]
    text, token_ids, odd_answer, empty, mismatched = serve_many(out, requests, tmp_path, loader="session")
    np.testing.assert_allclose(text["outputs"]["probabilities"], expected, atol=1e-5)
    assert text["outputs"]["label"] == [model.class_names[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose(token_ids["outputs"]["probabilities"], expected, atol=1e-5)
    assert np.isfinite(odd_answer["outputs"]["probabilities"]).all()
    assert len(odd_answer["outputs"]["label"]) == len(odd)
    assert empty["outputs"]["label"] == []
    assert "text_a and text_b need the same number of rows" in mismatched["error"]
    inputs = tf.saved_model.load(out).signatures["serving_default"].structured_input_signature[1]
    assert sorted(inputs) == ["text_a", "text_b"]


@pytest.mark.slow  # moved to keep the default suite under 15 min; CI runs it
def test_multi_adapter_export_gives_pair_tasks_their_own_signature(tiny_preset, tmp_path):
    model = _pair_model(tiny_preset)
    model.add_adapter("topics", "lora", num_classes=4, task="text_classification")
    out = ka.export_multi_adapter_saved_model(model, str(tmp_path / "multi"), names=["default", "topics"])
    model.set_active_adapters("default")
    pairs = model.predict(PAIRS, verbose=0)
    model.set_active_adapters("topics")
    topics = model.predict(TEXTS, verbose=0)
    requests = [
        {"signature": "classify_default", "inputs": {"text_a": PAIRS[0], "text_b": PAIRS[1]}},
        {"signature": "classify", "inputs": {"text": TEXTS, "adapter": ["topics"] * len(TEXTS)}},
    ]
    pair_answer, routed = serve_many(out, requests, tmp_path)
    np.testing.assert_allclose(pair_answer["outputs"]["probabilities"], pairs, atol=1e-5)
    np.testing.assert_allclose(routed["outputs"]["probabilities"], topics, atol=1e-5)


@pytest.mark.slow
def test_pair_tflite_matches_keras(tiny_preset, tmp_path):
    model = _pair_model(tiny_preset)
    path = ka.export_tflite(model, str(tmp_path / "lite"))
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(PAIRS, y=None).items()}
    lite = export.run_tflite(export.tflite_signature_runner(path), tokens)
    np.testing.assert_allclose(lite, model.predict(PAIRS, verbose=0), atol=1e-5)


# ------------------------------------------------------------- token tags
@pytest.fixture(scope="module")
def tagger(token_run):
    from keras_adapters.runs import folder as runs

    return runs.load_run(token_run[0])


def test_token_saved_model_answers_entities_like_predict_entities(tagger, tmp_path):
    out = ka.export_saved_model(tagger, str(tmp_path / "tags"))
    texts = ["the team won the cup", "Ünïcode → the minister, the bank!", "", "market " * 30]
    expected = tagger.predict_entities(texts)
    assert sum(map(len, expected)) >= 4  # entities to compare
    requests = [
        {"signature": "serving_default", "inputs": {"text": texts}},
        {"signature": "serving_default", "inputs": {"text": ODD_TEXTS_HEX}, "dtypes": {"text": "bytes_hex"}},
        {"signature": "serving_default", "inputs": {"text": []}},
    ]
    answer, odd, empty = serve_many(out, requests, tmp_path, loader="session")
    outputs = answer["outputs"]
    for row, spans in enumerate(expected):
        count = outputs["num_entities"][row]
        assert count == len(spans)
        got = [(outputs["entity_type"][row][i], outputs["entity_text"][row][i], outputs["start"][row][i],
                outputs["end"][row][i]) for i in range(count)]
        assert got == [(s["type"], s["text"], s["start"], s["end"]) for s in spans]
        np.testing.assert_allclose(outputs["score"][row][:count], [s["score"] for s in spans], atol=1e-5)
    assert len(odd["outputs"]["num_entities"]) == len(ODD_TEXTS_HEX)
    assert empty["outputs"]["num_entities"] == []


def test_token_tflite_gives_tag_probabilities(tagger, tmp_path):
    path = ka.export_tflite(tagger, str(tmp_path / "lite"))
    tokens = {k: np.asarray(v) for k, v in tagger.preprocessor(["the team won the cup", "the bank"]).items()}
    lite = export.run_tflite(export.tflite_signature_runner(path), tokens)
    np.testing.assert_allclose(lite, tagger.predict(tokens, verbose=0), atol=1e-5)
    assert open(os.path.join(tmp_path, "lite", "labels.txt")).read().split() == tagger.class_names


# ------------------------------------------------------ question answering
@pytest.fixture(scope="module")
def answerer(qa_run):
    from keras_adapters.runs import folder as runs

    return runs.load_run(qa_run[0])


def test_question_answering_saved_model_answers_like_keras(answerer, tmp_path):
    out = ka.export_saved_model(answerer, str(tmp_path / "qa"))
    contexts = ["Zoë → the film won the great award", "the team won the cup " * 4 + "the great award",
                "", "great award " * 200]
    questions = ["the news", "the news", "the news", ""]
    expected = answerer.answer(questions, contexts)
    requests = [
        {"signature": "serving_default", "inputs": {"question": questions, "context": contexts}},
        {"signature": "serving_default", "inputs": {"question": ODD_TEXTS_HEX, "context": ODD_TEXTS_HEX},
         "dtypes": {"question": "bytes_hex", "context": "bytes_hex"}},
        {"signature": "serving_default", "inputs": {"question": ["a", "b"], "context": ["c"]}},
        {"signature": "serving_default", "inputs": {"question": [], "context": []}},
    ]
    answers, odd, mismatched, empty = serve_many(out, requests, tmp_path, loader="session")
    outputs = answers["outputs"]
    assert outputs["answer"] == [e["answer"] for e in expected]
    # The last context repeats one phrase: its windows tie, and rounding (which differs between
    # CPUs' oneDNN kernels) picks the position. The answer and its score are asserted for all.
    assert outputs["start"][:3] == [e["start"] for e in expected[:3]]
    assert outputs["end"][:3] == [e["end"] for e in expected[:3]]
    np.testing.assert_allclose(outputs["score"], [e["score"] for e in expected], atol=1e-5)
    assert expected[0]["answer"] == expected[1]["answer"] == "great award"
    assert len(odd["outputs"]["answer"]) == len(ODD_TEXTS_HEX)
    assert "same number of rows" in mismatched["error"]
    assert empty["outputs"]["answer"] == []


def test_question_answering_tflite_gives_start_and_end_probabilities(answerer, tmp_path):
    from keras_adapters.tasks.question_answering import data as qa_data

    path = ka.export_tflite(answerer, str(tmp_path / "lite"))
    examples = [{"question": "the news", "context": "the team won the great award", "answers": []}]
    (x, _), = qa_data.window_dataset(examples, answerer.windows()).batch(4).take(1)
    tokens = {k: np.asarray(v) for k, v in x.items()}
    lite = export.run_tflite(export.tflite_signature_runner(path), tokens)
    np.testing.assert_allclose(lite, answerer.predict(tokens, verbose=0), atol=1e-5)
    assert lite.shape == (1, 2, 16)


@pytest.mark.slow  # the default run's budget (15 min on 2 cores): CI runs it with the slow tests
def test_multi_adapter_export_gives_a_question_answerer_its_own_signature(tiny_preset, tmp_path):
    keras.utils.set_random_seed(5)
    model = ka.AdapterQuestionAnswerer.from_preset(tiny_preset, method="lora", sequence_length=16, stride=3)
    model.add_adapter("topic", "lora", num_classes=4, task="text_classification")
    randomize_adapter_weights(model.backbone)
    out = ka.export_multi_adapter_saved_model(model, str(tmp_path / "multi"))
    questions, contexts = ["the news", "a vote"], ["the team won the cup the great award today", "bank profit"]
    model.set_active_adapters("default")
    expected = model.answer(questions, contexts)
    model.set_active_adapters("topic")
    probabilities = model.predict(TEXTS[:2], verbose=0)
    served = tf.saved_model.load(out).signatures
    got = served["classify_default"](question=tf.constant(questions), context=tf.constant(contexts))
    assert [a.decode() for a in got["answer"].numpy()] == [e["answer"] for e in expected]
    np.testing.assert_allclose(got["score"].numpy(), [e["score"] for e in expected], rtol=1e-4)
    routed = served["classify"](text=tf.constant(TEXTS[:2]), adapter=tf.constant(["topic", "topic"]))
    np.testing.assert_allclose(routed["probabilities"].numpy(), probabilities, atol=1e-5)


def test_ids_out_of_range_are_errors_not_another_adapters_answer(two_tasks, tmp_path):
    model = two_tasks
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS[:2]).items()}
    route = ka.Route("news", "topics")
    path = ka.export_tflite(model, str(tmp_path / "lite"), names=["news", "topics"])
    runner = export.tflite_signature_runner(path)
    model.set_active_adapters(route)
    for bad in (-1, -2, 2):
        ids = np.array([0, bad], "int32")
        with pytest.raises(ValueError, match=r"adapter_id must be in \[0, 2\); got \[" + str(bad)):
            model.predict({**tokens, "adapter_id": ids}, verbose=0)
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"adapter_id must be in \[0, 2\)"):
            model({**tokens, "adapter_id": ids})  # the graph's own check
        with pytest.raises(Exception):  # the interpreter's GATHER refuses the index
            export.run_tflite(runner, {**tokens, "adapter_id": ids})
    ids = np.array([1, 0], "int32")
    lite = export.run_tflite(runner, {**tokens, "adapter_id": ids})
    np.testing.assert_allclose(lite, model.predict({**tokens, "adapter_id": ids}, verbose=0), atol=1e-5)


def test_token_ids_out_of_range_are_errors(two_tasks, tmp_path):
    model = two_tasks
    model.set_active_adapters("news")
    tokens = {k: np.asarray(v) for k, v in model.preprocessor(TEXTS[:2]).items()}
    vocabulary = model.backbone.vocabulary_size
    out = ka.export_saved_model(model, str(tmp_path / "sm"), merge=False)
    served = tf.saved_model.load(out).signatures["serve_token_ids"]
    runner = export.tflite_signature_runner(ka.export_tflite(model, str(tmp_path / "lite")))
    for bad in (-1, vocabulary):
        ids = tokens["token_ids"].copy()
        ids[1, 1] = bad
        bad_tokens = {**tokens, "token_ids": ids}
        message = rf"token_ids must be in \[0, {vocabulary}\)"
        with pytest.raises(ValueError, match=message):
            model.predict(bad_tokens, verbose=0)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            served(**{k: tf.constant(v, tf.int32) for k, v in bad_tokens.items()})
        with pytest.raises(Exception):
            export.run_tflite(runner, bad_tokens)


_FAILING_TFLITE_WRITE = """
import resource, signal, sys
import keras_adapters as ka
from keras_adapters.serving import export

adapter, out, mode = sys.argv[1:]
convert = export._convert


def convert_then_fill_the_disk(*args, **kwargs):
    flatbuffer = convert(*args, **kwargs)
    # Python ignores SIGXFSZ (writes then fail with EFBIG, as on a full disk);
    # by default the signal kills the process in the middle of the write.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN if mode == "disk-full" else signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(flatbuffer) // 2, len(flatbuffer) // 2))
    return flatbuffer


export._convert = convert_then_fill_the_disk
export.export_tflite(ka.AdapterTextClassifier.from_adapter(adapter), out)
"""


@pytest.mark.slow  # 25 s each; the default suite must stay near 15 min
@pytest.mark.parametrize("mode", ["killed", "disk-full"])
def test_a_failed_tflite_export_keeps_the_previous_model(tiny_preset, tmp_path, mode):
    old = _trained(tiny_preset, "houlsby")
    out = tmp_path / "lite"
    ka.export_tflite(old, str(out))
    before = {f: (out / f).read_bytes() for f in ("model.tflite", "vocab.txt", "labels.txt")}
    new = ka.AdapterTextClassifier.from_preset(tiny_preset, num_classes=2, method="lora", sequence_length=16)
    new.save_adapter(str(tmp_path / "new"))
    result = subprocess.run(
        [sys.executable, "-c", _FAILING_TFLITE_WRITE, str(tmp_path / "new"), str(out), mode],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if mode == "killed":
        assert result.returncode == -25, result.stderr  # SIGXFSZ: killed in the middle of the write
    else:
        assert result.returncode == 1 and "File too large" in result.stderr, result.stderr
    assert {f: (out / f).read_bytes() for f in before} == before
    tokens = {k: np.asarray(v) for k, v in old.preprocessor(TEXTS).items()}
    lite = export.run_tflite(export.tflite_signature_runner(out / "model.tflite"), tokens)
    np.testing.assert_allclose(lite, old.predict(tokens, verbose=0), atol=1e-5)
    # The next export replaces everything and leaves no temporary file behind.
    ka.export_tflite(new, str(out))
    assert sorted(os.listdir(out)) == ["labels.txt", "model.tflite", "vocab.txt"]
    assert len((out / "labels.txt").read_text().split()) == 2


def test_a_routed_tflite_export_removes_the_single_task_labels(two_tasks, tmp_path):
    out = tmp_path / "lite"
    two_tasks.set_active_adapters("news")
    ka.export_tflite(two_tasks, str(out))
    ka.export_tflite(two_tasks, str(out), names=["news", "topics"])
    assert sorted(os.listdir(out)) == ["adapters.json", "model.tflite", "vocab.txt"]
    mode = os.stat(out / "model.tflite").st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)  # readable by a serving account, as open() would make it


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_saved_model_versions_are_readable_by_other_accounts(houlsby_export):
    _, out = houlsby_export
    mask = _umask()
    for root, dirs, files in os.walk(out):
        assert os.stat(root).st_mode & 0o777 == 0o777 & ~mask, root
        for f in files:
            assert os.stat(os.path.join(root, f)).st_mode & 0o777 == 0o666 & ~mask, f


def test_a_killed_export_leaves_no_temporary_folder_after_the_next(houlsby_export, tmp_path):
    model, _ = houlsby_export
    base = tmp_path / "serving"
    base.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (base / f".tmp-1-{dead.pid}-abc").mkdir()  # a killed export's
    (base / ".tmp-1-xyz").mkdir()  # an older release's
    (base / f".tmp-2-{os.getpid()}-def").mkdir()  # a live export's (this process)
    ka.export_saved_model(model, str(base), version=1)
    assert sorted(os.listdir(base)) == [f".tmp-2-{os.getpid()}-def", "1"]


@pytest.mark.parametrize("version", [-1, 1.5, True])
def test_versions_tf_serving_never_loads_are_refused(houlsby_export, tmp_path, version):
    model, _ = houlsby_export
    with pytest.raises(ValueError, match="version must be a whole number >= 0"):
        ka.export_saved_model(model, str(tmp_path / "sm"), version=version)
    assert not (tmp_path / "sm").exists()


def test_tflite_sequence_length_beyond_the_positions_is_refused(houlsby_export, tmp_path):
    model, _ = houlsby_export
    with pytest.raises(ValueError, match=r"sequence_length 600 does not fit this backbone: use 3 to 16"):
        ka.export_tflite(model, str(tmp_path / "lite"), sequence_length=600)
    assert not (tmp_path / "lite").exists()
