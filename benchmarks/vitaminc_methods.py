"""VitaminC fact verification (text pairs): test accuracy against training-set size.

Full fine-tuning, Houlsby and LoRA on MiniLM, each with the recipe the CLI
uses (`train_classifier`: AdamW, warm-up/decay, the method's learning rate,
default precision, best epoch by validation accuracy, length bucketing), on
seeded samples of the training pages (`examples/bigbench_data.py`, split by
Wikipedia page), evaluated on the same 2,000 pairs of held-out pages.

    .venv/bin/python benchmarks/vitaminc_methods.py --sizes 3000,10000 --methods full,houlsby,lora
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
from bbc_methods import train_and_evaluate  # noqa: E402
from bigbench_data import vitaminc_split  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="3000,10000")
    parser.add_argument("--methods", default="full,houlsby,lora")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default="benchmarks/results/vitaminc_methods.json")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    files = vitaminc_split(tuple(sorted(set(sizes) | {3000, 10000, 30000})))
    workdir = args.workdir or tempfile.mkdtemp()
    previous = json.load(open(args.output)) if os.path.isfile(args.output) else {"rows": []}
    rows = previous["rows"]
    for size in sizes:
        for spec in args.methods.split(","):
            method, lr = parse_spec(spec)
            run = os.path.join(workdir, f"run-{size}-" + "".join(c if c.isalnum() else "_" for c in spec))
            row = train_and_evaluate(
                files[f"train_{size}"], files["test"], run, method, name=spec, epochs=args.epochs,
                learning_rate=lr, sequence_length=args.sequence_length, bucket_by_sequence_length=True,
            )
            row["train_size"] = size
            rows = [r for r in rows if (r["method"], r.get("train_size")) != (spec, size)] + [row]
            print(json.dumps(row), flush=True)
            out = {
                "machine": machine_description(),
                "revision": git_revision(),
                "epochs": args.epochs,
                "sequence_length": args.sequence_length,
                "num_test_examples": row["num_test_examples"],
                "rows": rows,
            }
            json.dump(out, open(args.output, "w"), indent=2)  # after every row: a long run keeps its progress


if __name__ == "__main__":
    main()
