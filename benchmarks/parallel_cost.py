"""Cost of `Parallel` (one forward pass, every branch) against separate calls.

MiniLM with three Houlsby adapters (random non-zero weights: the cost does
not depend on them), one head each. Variant A: `Parallel(a, b, c)` in one
call; variant B: three calls, one per adapter (each its own traced function,
as a server with one function per task has). Both traced once before timing,
run in alternation (A B A B ...), medians of wall and process CPU time.

    .venv/bin/python benchmarks/parallel_cost.py --rounds 7 --batches 1,32
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import median  # noqa: E402

import keras_adapters as ka  # noqa: E402
from keras_adapters.core.injection import adapter_weights  # noqa: E402

NAMES = ("topic", "question", "spam")


def traced(model, spec, example):
    """A concrete function of the model with `spec` active (read at trace time)."""
    model.set_active_adapters(spec)
    function = tf.function(lambda x: model(x, training=False))
    function(example)  # trace now, with this spec
    return function


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--output", default="benchmarks/results/parallel_cost.json")
    args = parser.parse_args()

    model = ka.AdapterTextClassifier.from_preset("default", method=None, sequence_length=args.length)
    for name, classes in zip(NAMES, (5, 6, 2)):
        model.add_adapter(name, "houlsby", num_classes=classes)
    rng = np.random.default_rng(0)
    for w in adapter_weights(model.backbone):
        w.assign(w.numpy() + 0.02 * rng.standard_normal(w.shape).astype("float32"))

    results = {"machine": machine_description(), "revision": git_revision(), "rows": []}
    for batch in [int(b) for b in args.batches.split(",")]:
        ids = rng.integers(1000, 30000, (batch, args.length)).astype("int32")
        x = {
            "token_ids": tf.constant(ids),
            "segment_ids": tf.zeros_like(ids),
            "padding_mask": tf.ones_like(ids, dtype=tf.bool),
        }
        parallel = traced(model, ka.Parallel(*NAMES), x)
        separate = [traced(model, name, x) for name in NAMES]
        both = parallel(x)
        worst = max(float(np.abs(both[n].numpy() - f(x).numpy()).max()) for n, f in zip(NAMES, separate))
        timings = {"parallel": [], "separate": []}
        for _ in range(args.rounds):
            for variant in ("parallel", "separate"):
                with Timer() as t:
                    for _ in range(args.calls):
                        if variant == "parallel":
                            parallel(x)["spam"].numpy()
                        else:
                            [f(x).numpy() for f in separate]
                timings[variant].append((t.wall / args.calls, t.cpu / args.calls))
        row = {"batch": batch, "length": args.length, "max_abs_difference": worst}
        for variant, values in timings.items():
            row[f"{variant}_wall_ms"] = round(1000 * median([w for w, _ in values]), 2)
            row[f"{variant}_cpu_ms"] = round(1000 * median([c for _, c in values]), 2)
        row["parallel_over_separate_cpu"] = round(row["parallel_cpu_ms"] / row["separate_cpu_ms"], 3)
        row["parallel_over_separate_wall"] = round(row["parallel_wall_ms"] / row["separate_wall_ms"], 3)
        results["rows"].append(row)
        print(json.dumps(row))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
