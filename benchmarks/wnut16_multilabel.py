"""WNUT-16 tweets as multi-label classification (the set of entity types a
tweet mentions; 10 types, none allowed): micro/macro-F1 per method and seed.

The corpus is built from WNUT-16's human entity annotations by
`examples/wnut16_multilabel_data.py`, split by tweet exactly as the tagging
benchmark (80/20, seeded). Every row trains with the recipe the CLI uses
(`train_classifier`: the method's learning rate unless given, default
precision, a 10% validation split of the training tweets that picks the best
epoch and tunes each label's threshold) and is scored once on the same 479
test tweets with `evaluate_run` (thresholds from the validation data only).

    .venv/bin/python benchmarks/wnut16_multilabel.py --methods full,lora,houlsby --seeds 0,1,2
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "examples"))

from bbc_methods import parse_spec  # noqa: E402
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from wnut16_multilabel_data import wnut16_multilabel_split  # noqa: E402

import keras_adapters as ka  # noqa: E402
from keras_adapters.runs.evaluation import evaluate_run  # noqa: E402


def train_and_evaluate(files, run, spec, seed, **options):
    method, lr = parse_spec(spec)
    with Timer() as t:
        model, summary = ka.train_classifier(
            files["train"], run, method=method, learning_rate=lr, validation_split=0.1, seed=seed, verbose=0,
            tensorboard=False, overwrite=True, **options,
        )
    result = evaluate_run(run, files["test"])
    return {
        "method": spec,
        "seed": seed,
        "learning_rate": lr or model.default_learning_rate,
        "test_micro_f1": result["micro_f1"],
        "test_macro_f1": result["macro_f1"],
        "test_exact_match": result["exact_match"],
        "per_label_f1": {k: v["f1"] for k, v in result["per_label"].items()},
        "thresholds": {k: v["threshold"] for k, v in result["per_label"].items()},
        "num_test_tweets": result["num_examples"],
        "best_epoch": summary["best_epoch"],
        "train_wall_s": t.wall,
        "train_cpu_s": t.cpu,
        "trainable_parameters": ka.parameter_report(model)["trainable"],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="full,lora,houlsby")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default="benchmarks/results/wnut16_multilabel.json")
    args = parser.parse_args()
    files = wnut16_multilabel_split()
    workdir = args.workdir or tempfile.mkdtemp()
    rows = json.load(open(args.output))["rows"] if os.path.isfile(args.output) else []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for spec in args.methods.split(","):  # methods alternate within each seed
            run = os.path.join(workdir, "run-" + "".join(c if c.isalnum() else "_" for c in spec))
            row = train_and_evaluate(files, run, spec, seed, epochs=args.epochs, sequence_length=args.sequence_length)
            rows = [r for r in rows if (r["method"], r["seed"]) != (spec, seed)] + [row]
            print(json.dumps(row), flush=True)
            out = {"machine": machine_description(), "revision": git_revision(), "epochs": args.epochs,
                   "sequence_length": args.sequence_length, "rows": rows}
            json.dump(out, open(args.output, "w"), indent=2)


if __name__ == "__main__":
    main()
