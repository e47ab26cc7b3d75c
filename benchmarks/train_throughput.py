"""Training throughput (examples/s) per method x precision x XLA, in one run.

All variants live in one process; after a warm-up (tracing, XLA compile,
first steps) the variants are run in alternation (A B C ... A B C ...), a few
steps each per round, and each step's wall and CPU time is recorded. Reported:
medians per variant, and ratios to full fine-tuning in float32 measured in the
same run.

    .venv/bin/python benchmarks/train_throughput.py --rounds 5 --steps 4
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import median  # noqa: E402

import keras_adapters as ka  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="full,head,houlsby,pfeiffer,lora,ia3")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--xla", default="off,on")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/train_throughput.json")
    args = parser.parse_args()

    preset = ka.default_preset()
    rng = np.random.default_rng(0)
    b, L = args.batch_size, args.sequence_length
    vocab = 30522
    x = {
        "token_ids": rng.integers(1000, vocab, (b, L)).astype("int32"),
        "segment_ids": np.zeros((b, L), "int32"),
        "padding_mask": np.ones((b, L), bool),
    }
    y = rng.integers(0, 5, (b,))

    variants = {}
    for precision in args.precisions.split(","):
        for method in args.methods.split(","):
            for xla in args.xla.split(","):
                name = f"{method}/{precision}/xla-{xla}"
                model = ka.AdapterTextClassifier.from_preset(
                    preset, num_classes=5, method=method, sequence_length=L, dtype=precision
                )
                model.compile(jit_compile=(xla == "on"))
                with Timer() as t:
                    for _ in range(args.warmup):
                        model.train_on_batch(x, y)
                print(f"warm-up {name}: {t.wall:.1f}s", flush=True)
                variants[name] = {"model": model, "wall": [], "cpu": []}

    for r in range(args.rounds):
        for name, v in variants.items():
            for _ in range(args.steps):
                with Timer() as t:
                    v["model"].train_on_batch(x, y)
                v["wall"].append(t.wall)
                v["cpu"].append(t.cpu)
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    base = variants.get("full/float32/xla-off")
    rows = []
    for name, v in variants.items():
        wall, cpu = median(v["wall"]), median(v["cpu"])
        row = {
            "variant": name,
            "steps": len(v["wall"]),
            "median_step_wall_s": wall,
            "median_step_cpu_s": cpu,
            "examples_per_s_wall": b / wall,
            "examples_per_cpu_s": b / cpu,
        }
        if base:
            row["speedup_vs_full_fp32_wall"] = median(base["wall"]) / wall
            row["speedup_vs_full_fp32_cpu"] = median(base["cpu"]) / cpu
        rows.append(row)
    result = {
        "machine": machine_description(),
        "revision": git_revision(),
        "batch_size": b,
        "sequence_length": L,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2)
    print(result["machine"])
    print(f"{'variant':36s} {'ex/s wall':>10s} {'ex/CPU-s':>9s} {'x full32 wall':>13s} {'x full32 cpu':>12s}")
    for row in rows:
        print(
            f"{row['variant']:36s} {row['examples_per_s_wall']:10.1f} {row['examples_per_cpu_s']:9.1f} "
            f"{row.get('speedup_vs_full_fp32_wall', float('nan')):13.2f} {row.get('speedup_vs_full_fp32_cpu', float('nan')):12.2f}"
        )


if __name__ == "__main__":
    main()
