"""A training step's cost in two source trees, in alternating processes.

Times `train_on_batch` of MiniLM + our default LoRA (`--precision`, default
what `train` picks: `mixed_bfloat16` on CPUs with bf16 instructions)
on the same 64 BBC News articles at length 128 (DP-SGD's expected batch on
BBC News; nearly every article fills the 128 tokens), plainly and under
DP-SGD (`privacy=`: the batched per-example pass), one process per (tree,
kind), the trees alternating (A B A B ...) within each round: `--steps`
timed steps after 2 untimed ones, each process's median, then the median
over `--rounds`. Process CPU time is the number to compare: wall time on
this machine moves up to 2x between identical runs.

Make the tree to compare against with git, e.g.

    git worktree add /tmp/before <revision>
    .venv/bin/python benchmarks/step_revisions.py /tmp/before . --rounds 3

Each worker imports `keras_adapters` from its tree (checked) and the BBC
texts from `dp_step.py`. Writes
benchmarks/results/step_revisions.json.
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("plain", "private")


def worker(root, kind, steps, batch, precision):
    root = os.path.abspath(root)
    sys.path[:0] = [root, HERE, os.path.join(HERE, "..", "examples")]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np

    import keras_adapters as ka
    from common import time_calls
    from dp_step import bbc_texts
    from keras_adapters.core import dp_sgd

    if not os.path.abspath(ka.__file__).startswith(root + os.sep):
        raise SystemExit(f"keras_adapters came from {ka.__file__}, not from {root}")
    keras.utils.set_random_seed(0)
    made = ka.AdapterModel.from_preset(
        ka.default_preset(), num_classes=5, method="lora", sequence_length=128, dtype=precision
    )
    made.compile(privacy=None if kind == "plain" else ka.DPConfig(epsilon=8.0, delta=1e-5))
    x = made.preprocessor(bbc_texts(batch, False))
    x = {k: np.asarray(v) for k, v in (x[0] if isinstance(x, tuple) else x).items()}
    y = np.arange(batch) % 5
    if kind == "private":
        dp_sgd.prepare(made, made.privacy.plan(1781, batch, 3), (x, y), ka.tasks.get_task(made.task))
    times = time_calls(lambda: made.train_on_batch(x, y), steps, warmup=2)
    return {k: float(np.median(v)) for k, v in times.items()}


def revision(root):
    def git(*args):
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "keras_adapters") else "")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs=2, help="two source trees (A, then B)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--precision", default="auto", help="the model's dtype (`auto`: what `train` picks)")
    parser.add_argument("--worker", nargs=2, metavar=("TREE", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.steps, args.batch, args.precision)))
        return
    sys.path.insert(0, HERE)
    from common import machine_description
    from common import median
    from common import run_worker

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    runs = {(tree, kind): [] for kind in args.kinds.split(",") for tree in args.trees}
    for round_ in range(args.rounds):
        for tree, kind in runs:  # trees alternate within each kind
            argv = [sys.executable, __file__, *args.trees, "--steps", str(args.steps), "--batch", str(args.batch),
                    "--precision", args.precision, "--worker", tree, kind]
            runs[tree, kind].append(run_worker(f"{tree} {kind}", argv, env))
            print(round_, tree, kind, runs[tree, kind][-1], flush=True)
    rows = [
        {"tree": tree, "revision": revision(tree), "kind": kind, "precision": args.precision, "batch": args.batch,
         "length": 128,
         "cpu_s": round(median([r["cpu"] for r in got]), 3), "wall_s": round(median([r["wall"] for r in got]), 3),
         "cpu_s_each": [round(r["cpu"], 3) for r in got], "wall_s_each": [round(r["wall"], 3) for r in got]}
        for (tree, kind), got in runs.items()
    ]
    for row in rows:
        print(json.dumps(row))
    result = {"machine": machine_description(), "rounds": args.rounds, "steps": args.steps, "rows": rows}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "step_revisions.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
