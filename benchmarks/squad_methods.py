"""SQuAD v1.1 extractive question answering: full fine-tuning, Houlsby and LoRA on MiniLM.

The setting of the issue's PyTorch reference (transformers + peft, full
fine-tuning exact match 43.8, F1 58.0): the SQuAD v1.1 dev set split by
article (`examples/bigbench_data.py`), 3,000 training questions, 2 epochs,
windows of 256 tokens sharing 96, evaluated on 600 questions of held-out
articles with the official exact match and F1. Each method is trained with
the recipe the CLI uses (`train_classifier`: AdamW, warm-up/decay, default
precision); no validation split, so all 3,000 questions train, as in the
reference.

    .venv/bin/python benchmarks/squad_methods.py --methods full@1e-4,houlsby,lora
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

import keras_adapters as ka  # noqa: E402
from bbc_methods import parse_spec  # noqa: E402
from bigbench_data import squad_split  # noqa: E402
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from keras_adapters.runs.evaluation import evaluate_run  # noqa: E402


def train_and_evaluate(train_file, test_file, run, method, name, seed=0, **options):
    """One row: train `method` on `train_file`, score the run on `test_file`."""
    with Timer() as t:
        model, summary = ka.train_classifier(
            train_file, run, method=method, task="question_answering", validation_split=None, seed=seed,
            verbose=0, tensorboard=False, overwrite=True, **options,
        )
    result = evaluate_run(run, test_file)
    adapter = os.path.join(run, "adapter")
    return {
        "method": name,
        "seed": seed,
        "config": model.adapter_config().get_config(),
        "learning_rate": options.get("learning_rate") or model.default_learning_rate,
        "test_exact_match": result["exact_match"],
        "test_f1": result["f1"],
        "num_test_examples": result["num_examples"],
        "train_accuracy": summary["best_value"],
        "train_wall_s": t.wall,
        "train_cpu_s": t.cpu,
        "fit_questions_per_s": summary["examples_per_second"],
        "trainable_parameters": ka.parameter_report(model)["trainable"],
        "adapter_folder_bytes": sum(os.path.getsize(os.path.join(adapter, f)) for f in os.listdir(adapter)),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="full@1e-4,houlsby,lora")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=96)
    parser.add_argument("--precision", default="auto", help="auto: mixed_bfloat16 on CPUs with bf16 instructions")
    parser.add_argument("--seeds", default="0", help="comma-separated; rows of seed 0 keep their old names")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default="benchmarks/results/squad_methods.json")
    args = parser.parse_args()
    files = squad_split(train_size=3000, test_size=600)
    workdir = args.workdir or tempfile.mkdtemp()
    previous = json.load(open(args.output)) if os.path.isfile(args.output) else {"rows": []}
    rows = previous["rows"]
    for spec, seed in [(s, int(n)) for n in args.seeds.split(",") for s in args.methods.split(",")]:
        method, lr = parse_spec(spec)
        name = spec if args.precision == "auto" else f"{spec} {args.precision}"
        name += f" seed {seed}" if seed else ""
        run = os.path.join(workdir, "run-" + "".join(c if c.isalnum() else "_" for c in name))
        row = train_and_evaluate(
            files["train"], files["test"], run, method, name, epochs=args.epochs, learning_rate=lr,
            sequence_length=args.sequence_length, stride=args.stride, precision=args.precision, seed=seed,
        )
        rows = [r for r in rows if r["method"] != name] + [row]
        print(json.dumps(row), flush=True)
        out = {
            "machine": machine_description(),
            "revision": git_revision(),
            "epochs": args.epochs,
            "sequence_length": args.sequence_length,
            "stride": args.stride,
            "num_train_questions": 3000,
            "reference": {"source": "issue 12, PyTorch + transformers 5.24, full fine-tuning at 1e-4",
                          "test_exact_match": 43.8, "test_f1": 58.0},
            "rows": rows,
        }
        json.dump(out, open(args.output, "w"), indent=2)  # after every row: a long run keeps its progress


if __name__ == "__main__":
    main()
