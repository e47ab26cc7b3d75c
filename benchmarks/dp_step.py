"""The cost of privacy per training step: DP-SGD's step against the plain one.

One process, three models of MiniLM + our default LoRA (same weights, the
default precision): one compiled plainly, two with `privacy=` (their
`train_step` runs `core.dp_sgd`): "private" takes every example's gradient
from one batched pass (`per_example`, what private training uses for LoRA),
"private_loop" one example at a time, each cut to its own length (what it
uses for methods the batched pass does not cover). All take the same
batches of 32 real BBC News texts, in turns (plain, private, private_loop,
plain, ...), and the report gives medians of process CPU seconds and wall
seconds per step. Two
inputs: whole articles at length 128 (nearly every one fills it: the
per-example loop cannot save padding) and their titles at length 128 (about
10 tokens: what short messages cost).

    .venv/bin/python benchmarks/dp_step.py --calls 8

Writes benchmarks/results/dp_step.json.
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import median  # noqa: E402

import numpy as np  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import keras_adapters as ka  # noqa: E402
from keras_adapters.core import dp_sgd  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def bbc_texts(count, titles):
    from bbc_news_demo import bbc_news_folder

    root = bbc_news_folder()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".txt"))
    rng = np.random.RandomState(0)
    chosen = [files[i] for i in rng.choice(len(files), count, replace=False)]
    texts = [open(f, encoding="utf-8", errors="replace").read() for f in chosen]
    return [t.strip().splitlines()[0] if titles else t for t in texts]


def model(length, privacy=None):
    keras.utils.set_random_seed(0)
    made = ka.AdapterModel.from_preset(ka.default_preset(), num_classes=5, method="lora", sequence_length=length)
    made.compile(privacy=privacy)
    return made


def run(titles, calls, length=128, batch=32):
    plain = model(length)
    x = plain.preprocessor(bbc_texts(batch, titles))
    x = {k: np.asarray(v) for k, v in (x[0] if isinstance(x, tuple) else x).items()}
    y = np.arange(batch) % 5
    steps = {"plain": lambda: plain.train_on_batch(x, y)}
    for name in ("private", "private_loop"):
        private = model(length, ka.DPConfig(epsilon=8.0, delta=1e-5))
        plan = private.privacy.plan(1781, batch, 3)  # as on BBC News
        dp_sgd.prepare(private, plan, (x, y), ka.tasks.get_task(private.task))
        assert private.dp_state.batched
        private.dp_state.batched = name == "private"
        steps[name] = lambda m=private: m.train_on_batch(x, y)
    for step in steps.values():  # trace and warm up
        for _ in range(2):
            step()
    times = {name: {"cpu": [], "wall": []} for name in steps}
    for _ in range(calls):
        for name, step in steps.items():  # alternate
            c, w = time.process_time(), time.perf_counter()
            step()
            times[name]["cpu"].append(time.process_time() - c)
            times[name]["wall"].append(time.perf_counter() - w)
    tokens = float(np.asarray(x["padding_mask"]).sum(axis=1).mean())
    return {
        "input": "titles" if titles else "articles", "mean_tokens": round(tokens, 1), "batch": batch,
        **{f"{n}_{k}_s": round(median(v[k]), 3) for n, v in times.items() for k in ("cpu", "wall")},
        "calls": calls,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=8)
    args = parser.parse_args()
    rows = [run(titles, args.calls) for titles in (False, True)]
    for row in rows:
        print(json.dumps(row), flush=True)
    result = {"machine": machine_description(), "revision": git_revision(), "rows": rows}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "dp_step.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
