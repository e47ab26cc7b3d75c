"""Latency of exported models: SavedModel (base, Houlsby, merged LoRA) and TFLite.

Exports MiniLM classifiers (5 classes, length 128), loads each SavedModel as
TF Serving would (`tf.saved_model.load`, `serve_token_ids` signature, so
tokenization is not timed), and times batch 1 and batch 32 calls in
alternation across variants; also the TFLite float32 and dynamic-int8 models
(batch 1, the interpreter's usual use). Adapter weights are set to random
non-zero values: latency does not depend on them, but merging must be real.

    .venv/bin/python benchmarks/serving_latency.py --rounds 5 --calls 10
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import median  # noqa: E402

import keras_adapters as ka  # noqa: E402
from keras_adapters.serving import export  # noqa: E402
from keras_adapters.core.injection import adapter_weights  # noqa: E402


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10, help="calls per variant per round")
    parser.add_argument("--output", default="benchmarks/results/serving_latency.json")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp()
    preset = ka.default_preset()
    rng = np.random.default_rng(0)
    models = {}
    for name, method in (("base", "head"), ("houlsby", "houlsby"), ("lora_merged", "lora")):
        model = ka.AdapterTextClassifier.from_preset(preset, num_classes=5, method=method, sequence_length=128)
        for w in adapter_weights(model.backbone):
            w.assign(0.02 * rng.standard_normal(w.shape).astype("float32"))
        models[name] = model
    saved = {name: tf.saved_model.load(ka.export_saved_model(m, os.path.join(tmp, name)))
             for name, m in models.items()}
    sizes = {name: folder_bytes(os.path.join(tmp, name)) for name in models}
    lite = {}
    for q in ("none", "dynamic"):
        path = ka.export_tflite(models["houlsby"], os.path.join(tmp, f"lite_{q}"), quantize=q)
        lite[f"tflite_houlsby_{'float32' if q == 'none' else 'int8_dynamic'}"] = export.tflite_signature_runner(path)
        sizes[f"tflite_houlsby_{'float32' if q == 'none' else 'int8_dynamic'}"] = os.path.getsize(path)

    def tokens(batch):
        ids = rng.integers(1000, 30000, (batch, 128)).astype("int32")
        ids[:, 0], ids[:, -1] = 101, 102
        return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}

    inputs = {1: tokens(1), 32: tokens(32)}
    calls = {}
    for name, loaded in saved.items():
        fn = loaded.signatures["serve_token_ids"]
        for b in (1, 32):
            x = {k: tf.constant(v) for k, v in inputs[b].items()}
            calls[f"saved_model/{name}/batch{b}"] = lambda fn=fn, x=x: fn(**x)
    for name, runner in lite.items():
        x = inputs[1]
        calls[f"{name}/batch1"] = lambda runner=runner, x=x: runner(**x)
    times = {k: {"wall": [], "cpu": []} for k in calls}
    for call in calls.values():  # warm-up
        for _ in range(3):
            call()
    for r in range(args.rounds):
        for key, call in calls.items():
            for _ in range(args.calls):
                with Timer() as t:
                    call()
                times[key]["wall"].append(t.wall)
                times[key]["cpu"].append(t.cpu)
        print(f"round {r + 1} done", flush=True)
    rows = {}
    for key, v in times.items():
        rows[key] = {
            "median_ms": 1000 * median(v["wall"]),
            "p95_ms": 1000 * float(np.percentile(v["wall"], 95)),
            "median_cpu_ms": 1000 * median(v["cpu"]),
            "calls": len(v["wall"]),
        }
    for b in (1, 32):
        base = rows[f"saved_model/base/batch{b}"]
        for name in ("houlsby", "lora_merged"):
            row = rows[f"saved_model/{name}/batch{b}"]
            row["overhead_vs_base_wall"] = row["median_ms"] / base["median_ms"] - 1
            row["overhead_vs_base_cpu"] = row["median_cpu_ms"] / base["median_cpu_ms"] - 1
    result = {"machine": machine_description(), "revision": git_revision(), "rows": rows, "bytes_on_disk": sizes}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    json.dump(result, open(args.output, "w"), indent=2)
    for key, row in rows.items():
        print(key, {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    print(sizes)


if __name__ == "__main__":
    main()
