"""Small-batch serving latency against PyTorch, side by side in one run (issue 29).

Every variant is its own process (one framework per process); the variants
alternate (A B C … × rounds) and each reports, per input shape, the
medians over its timed calls of wall time and of the process's CPU time
(all threads), and the wall time's 95th percentile. MiniLM, 5 classes, a Houlsby adapter with random non-zero
weights (ours) against the plain model (PyTorch eager, `inference_mode`,
bf16 autocast or float32), fixed random token ids.

Shapes: batch 1 at 16, 32, 64 and 128 tokens; batches 2, 4, 8, 16, 32 at
128 tokens. Ours through the SavedModel's `serve_token_ids` (tokenization
not timed on either side); and texts, tokenization included on both sides
(PyTorch through its fast tokenizer, padded to the longest text): one real
short text (`text`) and a batch of eight (`texts8`), ours through
`serving_default`.

Our variants: the export's precision (float32, bfloat16), with the
self-attention fused into one query/key/value product (0.15), without it
(the 0.14 graph: `_unfused`), with the attention projections as keras'
einsums too (before 0.14: `_einsum`), with and without
the forward pass compiled by XLA (`jit_compile=True`, `_xla_forward`), with
`TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1` in the serving process (oneDNN keeps
the weights' reordered copies between calls), with
`TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD=1` (oneDNN runs part of each op on
the calling thread), with one intra-op thread, with one inter-op thread
(`_inter1`), with oneDNN's float transposes (0.15-0.30: `_floatT`), with
the bottlenecks' down-projections as their own products, Keras' layer norms
and 3-D encoder layers (0.31: `_unfolded`), with Keras' layer norms alone
(`_kerasLN`), with 3-D encoder layers alone (`_3d`), with the scores'
mask as Keras' `where`s (`_whereMask`), without oneDNN's layer norm
(`_f32LN`), both (0.32: `_032`), with oneDNN's layer norm from 64 or 128
rows instead of 256 (`_rows64`, `_rows128`), with texts served at the
whole sequence length (0.33 and before: `_padded`);
and the int8 TFLite model (batch 1, 128 tokens: its length is fixed).

    .venv/bin/python benchmarks/serving_small_batch.py --torch-python /path/to/torch-venv/bin/python --rounds 3

Writes benchmarks/results/serving_small_batch.json.
"""

import argparse
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile

from common import time_calls

HERE = os.path.abspath(__file__)
CLASSES = 5
SHAPES = [(1, 16), (1, 32), (1, 64), (1, 128), (2, 128), (4, 128), (8, 128), (16, 128), (32, 128)]
TEXT = "Shares in the bank fell 5% after it reported lower profits for the third quarter."
#: Eight short texts of different lengths (4 to 27 words), served as one batch.
TEXTS = [TEXT, "Rain stops play at Lord's.", "Ministers agree a new deal on farm subsidies after two days of talks.",
         "The band's third album tops the charts.", "Mobile phone sales rose sharply in the last three months of the "
         "year, as cheaper handsets with cameras and music players drew new buyers.",
         "Striker ruled out for six weeks.", "Oil prices hit a record high.",
         "Voters in the north will choose a new mayor on Thursday, after the previous one resigned in March."]


def _calls(batch):
    return max(8, 40 // batch)


def _ids(batch, length):
    import numpy as np

    return np.random.RandomState(batch * 1000 + length).randint(1000, 30000, size=(batch, length)).astype("int32")


# ----------------------------------------------------------------- workers
def torch_worker(bf16):
    import torch
    from transformers import AutoTokenizer
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(os.environ["MODEL_DIR"], num_labels=CLASSES).eval()
    out = {}
    for batch, length in SHAPES:
        ids = torch.from_numpy(_ids(batch, length)).long()
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}

        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(**inputs)

        out[f"{batch}x{length}"] = time_calls(step, _calls(batch))
    tokenizer = AutoTokenizer.from_pretrained(os.environ["MODEL_DIR"])
    for name, texts in (("text", [TEXT]), ("texts8", TEXTS)):
        def read(texts=texts):  # tokenization included, padded to the longest text as ours
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(**tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=128))

        out[name] = time_calls(read, _calls(len(texts)))
    return out


def keras_worker(path, threads):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 (the SavedModel's tokenizer ops)

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if os.environ.get("INTER_OP_THREADS"):  # as tensorflow_model_server's --tensorflow_inter_op_parallelism
        tf.config.threading.set_inter_op_parallelism_threads(int(os.environ["INTER_OP_THREADS"]))
    loaded = tf.saved_model.load(path)
    serve = loaded.signatures["serve_token_ids"]
    out = {}
    for batch, length in SHAPES:
        ids = tf.constant(_ids(batch, length))
        x = {"token_ids": ids, "segment_ids": tf.zeros_like(ids), "padding_mask": tf.ones_like(ids)}
        out[f"{batch}x{length}"] = time_calls(lambda: serve(**x), _calls(batch))
    for name, texts in (("text", [TEXT]), ("texts8", TEXTS)):
        text = tf.constant(texts)
        out[name] = time_calls(lambda: loaded.signatures["serving_default"](text=text), _calls(len(texts)))
    return out


def tflite_worker(path):
    import numpy as np

    from keras_adapters.serving.export import tflite_signature_runner

    runner = tflite_signature_runner(path)
    ids = _ids(1, 128)
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}
    return {"1x128": time_calls(lambda: runner(**x), _calls(1))}


# ------------------------------------------------------------------ parent
@contextlib.contextmanager
def _xla_forward():
    """Exports inside trace the model's forward pass as an XLA-compiled function
    (tokenization and label lookup stay outside: XLA has no string ops).
    Measured here, not shipped: it does not win (BENCHMARKS.md)."""
    import tensorflow as tf

    from keras_adapters.serving import graph

    original = graph.serving_copy

    def serving_copy(*args, **kwargs):
        copy = original(*args, **kwargs)
        copy.call = tf.function(copy.call, jit_compile=True, autograph=False)
        return copy

    graph.serving_copy = serving_copy
    try:
        yield
    finally:
        graph.serving_copy = original


@contextlib.contextmanager
def _graph_switch(**values):
    """Exports inside trace `keras_adapters.serving.graph` with its module
    switches set to `values`, e.g. `_FUSE_SELF_ATTENTION=False`."""
    from keras_adapters.serving import graph

    originals = {name: getattr(graph, name) for name in values}
    for name, value in values.items():
        setattr(graph, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(graph, name, value)


#: Graph variants: Keras' self-attention with 2-D projections (the 0.14
#: graph), the projections as Keras' einsums too (before 0.14), oneDNN's
#: float transposes (0.15-0.30), the bottlenecks' down-projections as their
#: own products, Keras' layer norms and 3-D encoder layers (0.31); Keras'
#: layer norms alone; 3-D encoder layers alone; Keras' masked softmax and
#: the float32 layer-norm ops (0.32); each of those two alone.
_keras_layer_norms = functools.partial(_graph_switch, _LAYER_NORMS=False)
_three_d = functools.partial(_graph_switch, _TWO_D_ENCODERS=False)
_where_masks = functools.partial(_graph_switch, _ADDED_MASKS=False)
_float32_layer_norms = functools.partial(_graph_switch, _ONEDNN_LAYER_NORMS=False)
_rows64 = functools.partial(_graph_switch, _ONEDNN_LAYER_NORM_ROWS=64)
_rows128 = functools.partial(_graph_switch, _ONEDNN_LAYER_NORM_ROWS=128)
@contextlib.contextmanager
def _padded_texts():
    """Exports inside run texts and padded token ids at the whole sequence
    length (0.33 and before), not cut after the batch's longest row."""
    from keras_adapters.tasks import base

    original = base.without_padding_columns
    base.without_padding_columns = lambda inputs: inputs
    try:
        yield
    finally:
        base.without_padding_columns = original


_v032 = functools.partial(_graph_switch, _ADDED_MASKS=False, _ONEDNN_LAYER_NORMS=False)
_unfolded = functools.partial(_keras_layer_norms, _FOLD_BOTTLENECK_DOWNS=False, _TWO_D_ENCODERS=False,
                              _ADDED_MASKS=False)
_float_transposes = functools.partial(_unfolded, _INTEGER_TRANSPOSES=False)
_unfused_attention = functools.partial(_unfolded, _FUSE_SELF_ATTENTION=False)
_einsum_projections = functools.partial(_unfused_attention, _FUSED_PROJECTIONS=())


def _model(method):
    import numpy as np

    import keras_adapters as ka
    from keras_adapters.core.injection import adapter_weights

    model = ka.AdapterTextClassifier.from_preset(ka.default_preset(), num_classes=CLASSES, method=method,
                                                 sequence_length=128)
    rng = np.random.default_rng(0)
    for w in adapter_weights(model.backbone):
        w.assign(rng.normal(0, 0.02, w.shape).astype("float32"))
    return model


def export_models(folder, needed):
    """{model key: its export} for the keys in `needed`: the Houlsby model in
    each precision and graph variant, the LoRA model (merged at export: the
    same network as PyTorch's), the int8 TFLite model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras_adapters as ka
    from keras_adapters.serving import export

    houlsby = _model("houlsby")
    graphs = {"": contextlib.nullcontext, "_unfused": _unfused_attention, "_einsum": _einsum_projections,
              "_xla": _xla_forward, "_floatT": _float_transposes, "_unfolded": _unfolded,
              "_kerasLN": _keras_layer_norms, "_3d": _three_d, "_whereMask": _where_masks,
              "_f32LN": _float32_layer_norms, "_032": _v032, "_rows64": _rows64, "_rows128": _rows128,
              "_padded": _padded_texts}
    models = {"houlsby": houlsby}
    paths = {}
    for key in needed:
        if key == "tflite_int8":
            paths[key] = export.export_tflite(houlsby, f"{folder}/tflite", sequence_length=128, quantize="dynamic")
            continue
        method = "lora" if key.startswith("lora_") else "houlsby"
        rest = key[5:] if method == "lora" else key
        precision, graph = rest.split("_", 1)[0], "_" + rest.split("_", 1)[1] if "_" in rest else ""
        if method not in models:
            models[method] = _model(method)
        model = models[method]
        with graphs[graph]():
            paths[key] = str(ka.export_saved_model(model, f"{folder}/{key}", precision=precision))
    return paths


def variants(torch_python):
    """{name: (argv, extra environment, the model key it serves or None)}."""
    frozen = {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}
    caller = {"TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD": "1"}
    ours = {
        # name: (model key, intra-op threads, extra environment)
        "ours_bfloat16": ("bfloat16", 0, {}),
        "ours_float32": ("float32", 0, {}),
        "ours_bfloat16_xla": ("bfloat16_xla", 0, {}),
        "ours_float32_xla": ("float32_xla", 0, {}),
        "ours_bfloat16_frozen": ("bfloat16", 0, frozen),
        "ours_bfloat16_lora_frozen": ("lora_bfloat16", 0, frozen),
        "ours_bfloat16_frozen_inter1": ("bfloat16", 0, {**frozen, "INTER_OP_THREADS": "1"}),
        "ours_bfloat16_lora_frozen_inter1": ("lora_bfloat16", 0, {**frozen, "INTER_OP_THREADS": "1"}),
        "ours_bfloat16_floatT_frozen": ("bfloat16_floatT", 0, frozen),
        "ours_bfloat16_lora_floatT_frozen": ("lora_bfloat16_floatT", 0, frozen),
        "ours_float32_floatT_frozen": ("float32_floatT", 0, frozen),
        "ours_bfloat16_unfolded_frozen": ("bfloat16_unfolded", 0, frozen),
        "ours_bfloat16_lora_kerasLN_frozen": ("lora_bfloat16_kerasLN", 0, frozen),
        "ours_bfloat16_lora_unfolded_frozen": ("lora_bfloat16_unfolded", 0, frozen),
        "ours_bfloat16_032_frozen": ("bfloat16_032", 0, frozen),
        "ours_bfloat16_lora_032_frozen": ("lora_bfloat16_032", 0, frozen),
        "ours_float32_lora_frozen": ("lora_float32", 0, frozen),
        "ours_bfloat16_lora_padded_frozen": ("lora_bfloat16_padded", 0, frozen),
        "ours_float32_frozen": ("float32", 0, frozen),
        "ours_bfloat16_unfused": ("bfloat16_unfused", 0, {}),
        "ours_bfloat16_unfused_frozen": ("bfloat16_unfused", 0, frozen),
        "ours_float32_unfused_frozen": ("float32_unfused", 0, frozen),
        "ours_bfloat16_einsum": ("bfloat16_einsum", 0, {}),
        "ours_bfloat16_einsum_frozen": ("bfloat16_einsum", 0, frozen),
        "ours_float32_einsum": ("float32_einsum", 0, {}),
        "ours_float32_einsum_frozen": ("float32_einsum", 0, frozen),
        "ours_bfloat16_caller": ("bfloat16", 0, caller),
        "ours_bfloat16_frozen_caller": ("bfloat16", 0, {**frozen, **caller}),
        "ours_bfloat16_1thread": ("bfloat16", 1, {}),
    }
    table = {
        "pytorch_bf16": ([torch_python, HERE, "worker", "torch", "1"], {}, None),
        "pytorch_float32": ([torch_python, HERE, "worker", "torch", "0"], {}, None),
    }
    for name, (key, threads, env) in ours.items():
        table[name] = ([sys.executable, HERE, "worker", "keras", key, str(threads)], env, key)
    table["ours_tflite_int8"] = ([sys.executable, HERE, "worker", "tflite", "tflite_int8"], {}, "tflite_int8")
    return table


def summarize(times):
    """Medians (p50) of wall and CPU time, and the wall time's 95th percentile."""
    p95 = statistics.quantiles(times["wall"], n=20, method="inclusive")[-1]
    return {"wall_ms": round(1000 * statistics.median(times["wall"]), 2),
            "wall_p95_ms": round(1000 * p95, 2),
            "cpu_ms": round(1000 * statistics.median(times["cpu"]), 2), "calls": len(times["wall"])}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch-python", required=True, help="a Python with torch==2.13.0 and transformers")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="", help="comma list of variant-name prefixes (NAME$: exactly NAME)")
    parser.add_argument("--output", default="benchmarks/results/serving_small_batch.json")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(HERE))
    from common import git_revision
    from common import machine_description
    from common import minilm_env
    from common import only
    from common import run_worker

    env = minilm_env()
    chosen = only(variants(args.torch_python), args.only)
    paths = export_models(tempfile.mkdtemp(prefix="small_batch_"), {key for _, _, key in chosen.values() if key})
    # Each worker gets its model's path in place of the model key.
    table = {name: ([paths.get(a, a) if key and a == key else a for a in argv], extra)
             for name, (argv, extra, key) in chosen.items()}
    times = {name: {} for name in table}
    for round_ in range(args.rounds):
        for name, (argv, extra) in table.items():
            result = run_worker(name, argv, {**env, **extra})
            for shape, t in result.items():
                slot = times[name].setdefault(shape, {"cpu": [], "wall": []})
                slot["cpu"] += t["cpu"]
                slot["wall"] += t["wall"]
            brief = {s: summarize(t)["wall_ms"] for s, t in result.items()}
            print(f"round {round_ + 1} {name}: {brief}", flush=True)
    report = {
        "machine": machine_description(),
        "git": git_revision(),
        "rounds": args.rounds,
        "results": {name: {s: summarize(t) for s, t in shapes.items()} for name, shapes in times.items()},
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report["results"], indent=1))


def worker(argv):
    if argv[0] == "torch":
        result = torch_worker(argv[1] == "1")
    elif argv[0] == "tflite":
        result = tflite_worker(argv[1])
    else:
        result = keras_worker(argv[1], int(argv[2]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
