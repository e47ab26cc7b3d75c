"""Serving many tasks from one SavedModel: the routed `classify` signature
against the alternatives a TF Serving user has, on mixed batches.

MiniLM (all-MiniLM-L6-v2), 128 tokens, Houlsby adapters (the CLI's default
method) with random non-zero weights (speed does not depend on their values)
and 2-6 classes each; also 32 adapters of mixed methods (Houlsby, LoRA,
(IA)^3, Pfeiffer in turn). Texts: real BBC News articles and SMS messages,
interleaved; each row of a batch goes to an adapter drawn at random.

Variants, all SavedModels run in this process through `tf.saved_model.load`
(what TF Serving runs), traced once before timing, alternated A B C D in
every round, medians of wall and process CPU time:

- `single`: (a) one task's own SavedModel on the whole batch: the ceiling;
- `routed`: the multi-task SavedModel's `classify` (one pass, rows routed);
- `sub_batches`: (b) the same SavedModel, one `classify_<name>` call per
  adapter present in the batch (its rows only);
- `per_task_models`: (c) one SavedModel per task, loaded side by side, one
  call per adapter present.

Memory: resident set size of a fresh process that loads the SavedModel(s)
and answers one batch; disk: size of the folders.

    .venv/bin/python benchmarks/routed_serving.py prepare --workdir runs/routed
    .venv/bin/python benchmarks/routed_serving.py run --workdir runs/routed
    .venv/bin/python benchmarks/routed_serving.py memory --workdir runs/routed
"""

import argparse
import glob
import json
import os
import random
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (the tokenizer ops the SavedModels use)
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import median  # noqa: E402

COUNTS = (1, 2, 8, 32)
MIXED = ("houlsby", "lora", "ia3", "pfeiffer")
LENGTH = 128


def task_names(n):
    return [f"task{i:02d}" for i in range(n)]


def _model(methods):
    import keras

    import keras_adapters as ka
    from keras_adapters.core.injection import adapter_weights

    keras.utils.set_random_seed(0)
    model = ka.AdapterTextClassifier.from_preset("default", method=None, sequence_length=LENGTH)
    for i, (name, method) in enumerate(zip(task_names(len(methods)), methods)):
        model.add_adapter(name, method, num_classes=2 + i % 5)
    rng = np.random.default_rng(0)
    for w in adapter_weights(model.backbone):
        w.assign(w.numpy() + 0.02 * rng.standard_normal(w.shape).astype("float32"))
    for head in model.heads.values():
        head.logits.kernel.assign(rng.standard_normal(head.logits.kernel.shape).astype("float32"))
    return model


def prepare(workdir, singles=max(COUNTS)):
    import shutil

    import keras_adapters as ka

    model = _model(["houlsby"] * max(COUNTS))
    for n in COUNTS:
        shutil.rmtree(f"{workdir}/multi_{n}", ignore_errors=True)
        ka.export_multi_adapter_saved_model(model, f"{workdir}/multi_{n}", names=task_names(n))
    shutil.rmtree(f"{workdir}/lean_{max(COUNTS)}", ignore_errors=True)
    ka.export_multi_adapter_saved_model(
        model, f"{workdir}/lean_{max(COUNTS)}", names=task_names(max(COUNTS)), task_signatures=False
    )
    for name in task_names(singles):
        shutil.rmtree(f"{workdir}/single/{name}", ignore_errors=True)
        model.save_adapter(f"{workdir}/adapters/{name}", name=name)
        alone = ka.AdapterTextClassifier.from_adapter(f"{workdir}/adapters/{name}")
        ka.export_saved_model(alone, f"{workdir}/single/{name}")
    mixed = _model([MIXED[i % len(MIXED)] for i in range(max(COUNTS))])
    shutil.rmtree(f"{workdir}/mixed_{max(COUNTS)}", ignore_errors=True)
    ka.export_multi_adapter_saved_model(mixed, f"{workdir}/mixed_{max(COUNTS)}")


def real_texts(n):
    """BBC News articles and SMS messages, interleaved."""
    bbc = sorted(glob.glob("runs/multi/data/bbc/test/*/*.txt"))
    sms = sorted(glob.glob("runs/multi/data/sms/test/*/*.txt"))
    if not bbc or not sms:
        sys.exit("runs/multi/data is missing: run examples/named_adapters_demo.py first.")
    rng = random.Random(0)
    rng.shuffle(bbc)
    rng.shuffle(sms)
    texts = [open(p, encoding="utf-8").read() for pair in zip(bbc, sms) for p in pair]
    return texts[:n]


def load(path):
    return tf.saved_model.load(path)


class Variants:
    """The four ways to answer one mixed batch (see the module docstring)."""

    def __init__(self, workdir, multi_dir, n):
        self.multi = load(multi_dir)
        self.singles = {name: load(f"{workdir}/single/{name}/1") for name in task_names(n)}
        self.names = task_names(n)

    def single(self, texts, rows):
        return self.singles["task00"].signatures["serving_default"](text=tf.constant(texts))["probabilities"]

    def routed(self, texts, rows):
        return self.multi.signatures["classify"](text=tf.constant(texts), adapter=tf.constant(rows))["probabilities"]

    def sub_batches(self, texts, rows):
        return self._loop(texts, rows, lambda name: self.multi.signatures[f"classify_{name}"])

    def per_task_models(self, texts, rows):
        return self._loop(texts, rows, lambda name: self.singles[name].signatures["serving_default"])

    def _loop(self, texts, rows, signature):
        out = [None] * len(texts)
        for name in sorted(set(rows)):
            idx = [i for i, r in enumerate(rows) if r == name]
            probs = signature(name)(text=tf.constant([texts[i] for i in idx]))["probabilities"].numpy()
            for i, p in zip(idx, probs):
                out[i] = p
        return out


def max_difference(routed, reference):
    routed = np.asarray(routed)
    return max(float(np.abs(routed[i, : len(p)] - p).max()) for i, p in enumerate(reference))


def _done(outputs):
    """Wait for the outputs (a tensor, or the loops' list of numpy rows)."""
    return outputs.numpy() if hasattr(outputs, "numpy") else outputs


def time_batches(variants, texts, rows, rounds, methods):
    timings = {m: [] for m in methods}
    for _ in range(rounds):
        for m in methods:
            with Timer() as t:
                _done(getattr(variants, m)(texts, rows))
            timings[m].append((t.wall, t.cpu))
    return {
        m: {"wall_s": median([w for w, _ in v]), "cpu_s": median([c for _, c in v])} for m, v in timings.items()
    }


def latencies(variants, texts, rows, calls, methods):
    """Batch-1 latency (ms) per variant: p50 and p95 over `calls` rows."""
    walls = {m: [] for m in methods}
    cpus = {m: [] for m in methods}
    for i in range(calls):
        j = i % len(texts)
        for m in methods:
            with Timer() as t:
                _done(getattr(variants, m)([texts[j]], [rows[j]]))
            walls[m].append(t.wall * 1e3)
            cpus[m].append(t.cpu * 1e3)
    return {
        m: {
            "p50_ms": float(np.percentile(walls[m], 50)),
            "p95_ms": float(np.percentile(walls[m], 95)),
            "cpu_p50_ms": float(np.percentile(cpus[m], 50)),
        }
        for m in methods
    }


def session_rss_mb(path, signature, inputs):
    """Resident memory (MB) of a fresh process that loads `path` into a TF1
    session, as TF Serving's C++ loader does, and answers one batch."""
    code = (
        "import sys, json, tensorflow as tf, tensorflow_text\n"
        "path, sig, inputs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])\n"
        "sess = tf.compat.v1.Session(graph=tf.Graph())\n"
        "meta = tf.compat.v1.saved_model.loader.load(sess, ['serve'], path)\n"
        "s = meta.signature_def[sig]\n"
        "sess.run(s.outputs['probabilities'].name, {s.inputs[k].name: v for k, v in inputs.items()})\n"
        "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]\n"
        "print(int(rss) / 1024)\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", code, path, signature, json.dumps(inputs)],
        capture_output=True, text=True, env=env, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def memory(workdir, output):
    """Add TF Serving-style (session) RSS to the results of `run`."""
    results = json.load(open(output))
    texts = real_texts(32)
    single = session_rss_mb(f"{workdir}/single/task00/1", "serving_default", {"text": texts})
    for row in results["rows"]:
        kind = "multi" if row["methods"] == "houlsby" else "mixed"
        rows = [task_names(row["adapters"])[i % row["adapters"]] for i in range(32)]
        routed = session_rss_mb(f"{workdir}/{kind}_{row['adapters']}/1", "classify", {"text": texts, "adapter": rows})
        row["session_rss_mb"] = {"single": single, "routed": routed}
        print(row["adapters"], row["methods"], row["session_rss_mb"], flush=True)
    n = max(COUNTS)
    rows = [task_names(n)[i % n] for i in range(32)]
    lean = f"{workdir}/lean_{n}/1"
    results["without_task_signatures"] = {
        "adapters": n,
        "session_rss_mb": session_rss_mb(lean, "classify", {"text": texts, "adapter": rows}),
        "rss_mb": rss_mb([lean], [["classify", {"text": texts, "adapter": rows}]]),
        "disk_mb": disk_mb([lean]),
    }
    print(results["without_task_signatures"], flush=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)


def rss_mb(paths, signature_calls):
    """Resident memory (MB) of a fresh process that loads `paths` and calls each once."""
    code = (
        "import os, sys, json, tensorflow as tf, tensorflow_text\n"
        "paths, calls = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "models = [tf.saved_model.load(p) for p in paths]\n"
        "for m, (sig, inputs) in zip(models, calls):\n"
        "    m.signatures[sig](**{k: tf.constant(v) for k, v in inputs.items()})\n"
        "rss = [l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]\n"
        "print(int(rss) / 1024)\n"
    )
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(paths), json.dumps(signature_calls)],
        capture_output=True, text=True, env=env, check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def disk_mb(paths):
    total = 0
    for path in paths:
        for root, _, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 1e6


def run(workdir, rounds, calls, output):
    texts = real_texts(32)
    rng = random.Random(1)
    methods = ("single", "routed", "sub_batches", "per_task_models")
    results = {"machine": machine_description(), "revision": git_revision(), "length": LENGTH, "rows": []}
    cases = [(n, f"{workdir}/multi_{n}/1", "houlsby") for n in COUNTS]
    cases.append((max(COUNTS), f"{workdir}/mixed_{max(COUNTS)}/1", "mixed"))
    for n, multi_dir, kind in cases:
        variants = Variants(workdir, multi_dir, n)
        names = task_names(n)
        rows = [rng.choice(names) for _ in texts]
        chosen = methods if kind == "houlsby" else ("single", "routed")
        for m in chosen:  # trace and warm every variant once
            getattr(variants, m)(texts, rows)
        row = {"adapters": n, "methods": kind, "distinct_in_batch": len(set(rows))}
        if kind == "houlsby":
            row["max_abs_difference_vs_per_task_models"] = max_difference(
                variants.routed(texts, rows), variants.per_task_models(texts, rows)
            )
        row["batch32"] = time_batches(variants, texts, rows, rounds, chosen)
        row["batch1"] = latencies(variants, texts, rows, calls, chosen)
        one = {"text": texts[:32], "adapter": rows}
        row["rss_mb"] = {
            "single": rss_mb([f"{workdir}/single/task00/1"], [["serving_default", {"text": texts}]]),
            "routed": rss_mb([multi_dir], [["classify", one]]),
        }
        row["disk_mb"] = {"single": disk_mb([f"{workdir}/single/task00/1"]), "routed": disk_mb([multi_dir])}
        if kind == "houlsby":
            singles = [f"{workdir}/single/{name}/1" for name in names]
            row["rss_mb"]["per_task_models"] = rss_mb(singles, [["serving_default", {"text": texts[:1]}]] * n)
            row["disk_mb"]["per_task_models"] = disk_mb(singles)
        results["rows"].append(row)
        print(json.dumps(row), flush=True)
        del variants
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump(results, f, indent=2)
    print_table(results)


def print_table(results):
    print(f"\n{results['machine']}\n")
    print("| adapters | methods | variant | batch 32 ex/s wall | ex/CPU-s | vs single (CPU) | "
          "batch 1 p50 / p95 ms | RSS MB | disk MB |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in results["rows"]:
        base = row["batch32"]["single"]["cpu_s"]
        for m, t in row["batch32"].items():
            lat = row["batch1"][m]
            print(
                f"| {row['adapters']} | {row['methods']} | {m} | {32 / t['wall_s']:.1f} | {32 / t['cpu_s']:.1f} | "
                f"{base / t['cpu_s']:.2f}x | {lat['p50_ms']:.0f} / {lat['p95_ms']:.0f} | "
                f"{row['rss_mb'].get(m, float('nan')):.0f} | {row['disk_mb'].get(m, float('nan')):.0f} |"
            )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=["prepare", "run", "memory"])
    parser.add_argument("--singles", type=int, default=max(COUNTS), help="prepare: how many single-task models")
    parser.add_argument("--workdir", default="runs/routed")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--output", default="benchmarks/results/routed_serving.json")
    args = parser.parse_args()
    if args.stage == "prepare":
        prepare(args.workdir, args.singles)
    elif args.stage == "memory":
        memory(args.workdir, args.output)
    else:
        run(args.workdir, args.rounds, args.calls, args.output)


if __name__ == "__main__":
    main()
