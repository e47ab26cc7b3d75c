"""WNUT-16 Twitter NER (token classification): entity F1 per method on one split.

Full fine-tuning and adapters on MiniLM with the recipe the CLI uses
(`train_classifier`: AdamW, warm-up/decay, the learning rate `tasks.defaults`
gives the (task, method) unless given, the head started from the training
tags' shares, default precision, best epoch by validation tag F1), on the
seeded 80/20 sentence split of `examples/wnut16_data.py`; test scores are
entity-level (seqeval's definition, `keras_adapters.tasks.token_classification.metrics`).
Each seed changes the initialisation, the validation sentences and the order.

    .venv/bin/python benchmarks/wnut16_methods.py --methods full,houlsby,lora --epochs 5 --seeds 0,1,2
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
from wnut16_data import wnut16_split  # noqa: E402

import keras_adapters as ka  # noqa: E402
from keras_adapters.core.precision import backbone_precision  # noqa: E402
from keras_adapters.runs.evaluation import evaluate_run  # noqa: E402


def train_and_evaluate(files, run, spec, seed=0, **options):
    method, lr = parse_spec(spec)
    with Timer() as t:
        model, summary = ka.train_classifier(
            files["train"], run, method=method, learning_rate=lr, validation_split=0.1, seed=seed, verbose=0,
            tensorboard=False, overwrite=True, **options,
        )
    history = json.load(open(os.path.join(run, "history.json")))
    result = evaluate_run(run, files["test"])
    return {
        "method": spec,
        "seed": seed,
        "learning_rate": lr or model.default_learning_rate,
        "precision": backbone_precision(model.backbone),
        "test_f1": result["f1"],
        "test_precision": result["precision"],
        "test_recall": result["recall"],
        "test_tag_accuracy": result["tag_accuracy"],
        "per_type_f1": {k: v["f1"] for k, v in result["per_type"].items()},
        "num_test_sentences": result["num_examples"],
        "best_epoch": summary["best_epoch"],
        "val_tag_f1_per_epoch": [round(v, 4) for v in history["val_tag_f1"]],
        "val_predicted_classes_per_epoch": history["val_predicted_classes"],
        "train_wall_s": t.wall,
        "train_cpu_s": t.cpu,
        "trainable_parameters": ka.parameter_report(model)["trainable"],
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="full,houlsby,lora")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default="benchmarks/results/wnut16_methods.json")
    args = parser.parse_args()
    files = wnut16_split()
    workdir = args.workdir or tempfile.mkdtemp()
    rows = json.load(open(args.output))["rows"] if os.path.isfile(args.output) else []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for spec in args.methods.split(","):
            run = os.path.join(workdir, "run-" + "".join(c if c.isalnum() else "_" for c in spec))
            row = train_and_evaluate(files, run, spec, seed, epochs=args.epochs, sequence_length=args.sequence_length,
                                     precision=args.precision)
            rows = [r for r in rows if (r["method"], r.get("seed", 0)) != (spec, seed)] + [row]
            print(json.dumps(row), flush=True)
            out = {"machine": machine_description(), "revision": git_revision(), "epochs": args.epochs,
                   "sequence_length": args.sequence_length, "rows": rows}
            json.dump(out, open(args.output, "w"), indent=2)


if __name__ == "__main__":
    main()
