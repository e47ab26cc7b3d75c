"""Sentence pairs end to end: fact verification on VitaminC with the CLI.

Writes VitaminC evidence/claim pairs (split by Wikipedia page) as JSONL
files from the BIG-bench archive that `scripts/setup.sh` keeps in
`data/cache/`, then runs what a user would:

    keras-adapters train data/cache/vitaminc/train_10000.jsonl -o RUN --method houlsby --bucket-by-length
    keras-adapters evaluate RUN data/cache/vitaminc/test_2000.jsonl --json   (here: evaluation.evaluate_run)
    keras-adapters predict RUN "EVIDENCE" "CLAIM"
    keras-adapters export RUN --format saved_model -o SERVING   (text_a, text_b -> label)

and checks the exported SavedModel against the run in this process. It
fails (exit 1) when test accuracy is not above the majority class's share.

    .venv/bin/python examples/vitaminc_pairs.py [--train-size 10000] [--method houlsby] [--epochs 3]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bigbench_data import vitaminc_split  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="runs/vitaminc")
    parser.add_argument("--train-size", type=int, default=10000, choices=[3000, 10000, 30000])
    parser.add_argument("--method", default="houlsby")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from keras_adapters import cli
    from keras_adapters.runs import evaluation
    from keras_adapters.runs import folder as runs

    files = vitaminc_split((3000, 10000, 30000))
    run = os.path.join(args.workdir, f"run-{args.method}-{args.train_size}")
    code = cli.main([
        "train", files[f"train_{args.train_size}"], "--output", run, "--method", args.method,
        "--epochs", str(args.epochs), "--bucket-by-length", "--overwrite",
    ])
    if code:
        return code
    result = evaluation.evaluate_run(run, files["test"])  # what `keras-adapters evaluate RUN TEST --json` prints
    labels = [json.loads(line)["label"] for line in open(files["test"])]
    majority = max(labels.count(c) for c in set(labels)) / len(labels)
    print(f"test accuracy {result['accuracy']:.4f} (majority class {majority:.4f}), "
          f"macro-F1 {result['macro_f1']:.4f} on {result['num_examples']} pairs")

    evidence = "Westlife: Westlife has sold more than 23 million records in the UK ."
    cli.main(["predict", run, evidence, "Westlife made under 23.5 million sales in the UK ."])

    serving = os.path.join(args.workdir, f"serving-{args.method}")
    if os.path.isdir(os.path.join(serving, "1")):
        import shutil

        shutil.rmtree(os.path.join(serving, "1"))
    if cli.main(["export", run, "--format", "saved_model", "--output", serving]):
        return 1
    pairs = [json.loads(line) for line in open(files["test"])][:32]
    texts_a, texts_b = [p["text_a"] for p in pairs], [p["text_b"] for p in pairs]
    served = tf.saved_model.load(os.path.join(serving, "1")).signatures["serving_default"]
    got = served(text_a=tf.constant(texts_a), text_b=tf.constant(texts_b))["probabilities"].numpy()
    expected = runs.load_run(run).predict((texts_a, texts_b), verbose=0)
    gap = float(np.abs(got - expected).max())
    print(f"SavedModel against the run on 32 test pairs: largest probability difference {gap:.2e}")
    if gap > 1e-3 or result["accuracy"] <= majority:
        print("FAILED: the SavedModel disagrees with the run, or the adapter did not beat the majority class")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
