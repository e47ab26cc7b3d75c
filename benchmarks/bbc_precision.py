"""BBC News accuracy of exported SavedModels in each precision.

For each run folder: exports float32, bfloat16 and float16 SavedModels
(`keras-adapters export --precision`), serves every held-out document
through `serving_default` (raw text in, as TF Serving gets it), and reports
accuracy and the share of documents whose top-1 label equals the float32
SavedModel's. Also the batch-32 serving time of each, alternating.

    .venv/bin/python benchmarks/bbc_precision.py runs/bbc/run-houlsby runs/bbc/run-lora \
        --test runs/bbc/data/test

(`examples/bbc_news_demo.py` makes runs/bbc/data and run-houlsby; run-lora is
`keras-adapters train runs/bbc/data/train -o runs/bbc/run-lora --method lora`.)
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import median  # noqa: E402

from keras_adapters.serving import export  # noqa: E402
from keras_adapters.io.text_data import scan_directory  # noqa: E402
from keras_adapters.serving.graph import PRECISIONS  # noqa: E402


def documents(test_dir):
    texts, labels = [], []
    for name, paths in scan_directory(test_dir).items():
        for path in paths:
            texts.append(open(path, encoding="utf-8").read())
            labels.append(name)
    return texts, np.array(labels)


def serve_all(fn, texts, batch=32):
    labels, seconds = [], []
    for i in range(0, len(texts), batch):
        with Timer() as t:
            out = fn(text=tf.constant(texts[i : i + batch]))
        labels += [x.decode() for x in out["label"].numpy()]
        seconds.append((t.wall, t.cpu))
    return np.array(labels), seconds


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--test", required=True)
    parser.add_argument("--output", default="benchmarks/results/bbc_precision.json")
    args = parser.parse_args()
    texts, truth = documents(args.test)
    report = {"machine": machine_description(), "git": git_revision(), "documents": len(texts), "runs": {}}
    for run in args.runs:
        folder = tempfile.mkdtemp()
        served = {p: tf.saved_model.load(export.export_run_saved_model(run, f"{folder}/{p}", precision=p))
                  .signatures["serving_default"] for p in PRECISIONS}
        labels, times = {}, {p: [] for p in PRECISIONS}
        for _ in range(2):  # alternate; the first pass also warms up
            for p, fn in served.items():
                labels[p], seconds = serve_all(fn, texts)
                times[p] += seconds[1:]
        rows = {}
        for p in PRECISIONS:
            rows[p] = {
                "accuracy": round(float((labels[p] == truth).mean()), 4),
                "top1_agreement_with_float32": round(float((labels[p] == labels["float32"]).mean()), 4),
                "batch32_wall_ms": round(1000 * median([w for w, _ in times[p]]), 1),
                "batch32_cpu_ms": round(1000 * median([c for _, c in times[p]]), 1),
            }
            print(os.path.basename(run), p, rows[p], flush=True)
        report["runs"][run] = rows
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
