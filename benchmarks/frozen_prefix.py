"""Frozen-prefix caching on BBC News: Houlsby in the top k of MiniLM's 6 layers.

For each k, trains with `keras-adapters train` (3 epochs, defaults) with
and without `--cache-frozen-layers`, evaluates on the held-out documents,
and records the training process's wall and CPU time (children's rusage).
k = 6 (every layer, nothing to cache) is the baseline.

    .venv/bin/python benchmarks/frozen_prefix.py --train runs/bbc/data/train --test runs/bbc/data/test
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402

CLI = [sys.executable, "-m", "keras_adapters.cli"]


def layers(k):
    return "transformer_layer_[" + "".join(str(i) for i in range(6 - k, 6)) + "]"


def run(argv):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--ks", default="2,3,6")
    parser.add_argument("--workdir", default="runs/frozen_prefix")
    parser.add_argument("--output", default="benchmarks/results/frozen_prefix.json")
    args = parser.parse_args()
    rows = []
    for k in [int(k) for k in args.ks.split(",")]:
        for cached in ([False, True] if k < 6 else [False]):
            name = f"top{k}{'_cached' if cached else ''}"
            out = os.path.join(args.workdir, name)
            argv = CLI + ["train", args.train, "-o", out, "--method", "houlsby", "--epochs", "3", "--quiet",
                          "--overwrite", "--method-option", f"target_layers={layers(k)}"]
            wall, cpu = run(argv + (["--cache-frozen-layers"] if cached else []))
            evaluation = subprocess.run(CLI + ["evaluate", out, args.test, "--json"], check=True,
                                        capture_output=True, text=True)
            result = json.loads(evaluation.stdout)
            row = {"variant": name, "k": k, "cached": cached, "train_wall_s": round(wall, 1),
                   "train_cpu_s": round(cpu, 1), "accuracy": round(result["accuracy"], 4),
                   "macro_f1": round(result["macro_f1"], 4)}
            print(row, flush=True)
            rows.append(row)
    report = {"machine": machine_description(), "git": git_revision(), "rows": rows}
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
