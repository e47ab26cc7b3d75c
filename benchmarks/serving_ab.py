"""Two served graphs of one model, in one process: calls alternated A B A B.

Process-level noise (which core, which memory, the thread pools' start)
moves batch-1 latency here by more than a graph change does, so graph
variants are compared inside one process: each variant's SavedModel is
loaded, and at every shape the calls alternate between them. Reports the
medians of wall and process CPU time per call (ms).

Variants are `benchmarks/serving_small_batch.py` model keys, e.g.
`lora_bfloat16` (the current graph) against `lora_bfloat16_floatT` (0.30's:
oneDNN's float transposes), or `bfloat16` (Houlsby) against
`bfloat16_unfolded` (0.31's: the down-projections as their own products).
Run it in the serving process' environment (`TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`).

    TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 .venv/bin/python benchmarks/serving_ab.py \
        --keys lora_bfloat16,lora_bfloat16_floatT,bfloat16,bfloat16_floatT
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = "1x16,1x32,1x64,1x128,8x128,32x128"


def alternate(paths, shapes, calls, pad_to=None):
    """{shape: {key: [wall ms, CPU ms]}}: medians over alternated calls;
    with `pad_to`, each row padded to that length with 0 ids and a 0 mask."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 (the SavedModels' tokenizer ops)

    from serving_small_batch import _ids

    serve = {key: tf.saved_model.load(path).signatures["serve_token_ids"] for key, path in paths.items()}
    out = {}
    for batch, length in shapes:
        ids = _ids(batch, length)
        mask = np.pad(np.ones_like(ids), [[0, 0], [0, max(0, (pad_to or 0) - length)]])
        ids = tf.constant(np.pad(ids, [[0, 0], [0, mask.shape[1] - length]]))
        x = {"token_ids": ids, "segment_ids": tf.zeros_like(ids), "padding_mask": tf.constant(mask)}
        for function in serve.values():
            for _ in range(5):
                function(**x)
        times = {key: ([], []) for key in serve}
        for _ in range(max(6, calls // batch)):
            for key, function in serve.items():
                c, w = time.process_time(), time.perf_counter()
                function(**x)
                times[key][1].append(time.process_time() - c)
                times[key][0].append(time.perf_counter() - w)
        out[f"{batch}x{length}"] = {key: [round(1000 * statistics.median(v), 3) for v in t] for key, t in times.items()}
        print(f"{batch}x{length}", out[f"{batch}x{length}"], flush=True)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", default="lora_bfloat16,lora_bfloat16_floatT,bfloat16,bfloat16_floatT")
    parser.add_argument("--shapes", default=SHAPES)
    parser.add_argument("--calls", type=int, default=300, help="per variant and shape, divided by the batch")
    parser.add_argument("--output", default="benchmarks/results/serving_transposes_ab.json")
    parser.add_argument("--pad-to", type=int, help="pad every row to this length (0 ids, 0 mask), as clients do")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="TensorFlow's intra-op threads (0: one per core; the README's server runs 1)")
    args = parser.parse_args()
    if args.intra_op_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    from common import git_revision
    from common import machine_description
    from serving_small_batch import export_models

    paths = export_models(tempfile.mkdtemp(prefix="serving_ab_"), args.keys.split(","))
    paths = {key: paths[key] for key in args.keys.split(",")}  # the order given is the order called
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    report = {"machine": machine_description(), "git": git_revision(), "units": "[wall ms, CPU ms] medians",
              "environment": {k: v for k, v in os.environ.items() if k.startswith("TF_ONEDNN")},
              "intra_op_threads": args.intra_op_threads or "one per core", "pad_to": args.pad_to,
              "results": alternate(paths, shapes, args.calls, args.pad_to)}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
