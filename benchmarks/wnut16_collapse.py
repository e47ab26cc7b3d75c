"""Why adapters collapsed to `O` on WNUT-16 tagging (issue 28): one run per variant.

Each variant is `train_classifier` on the tagging benchmark's split
(`examples/wnut16_data.py`, 5 epochs, length 64, seed 0) with one thing
changed; it records the validation tag F1 and the number of tags predicted
per epoch, the test entity F1, and how far the trained head's bias moved
(`O`'s bias minus the mean of the others').

- `--zero-bias`: the head's bias starts at zero (what 0.10 did) instead of
  the training tags' shares (`class_prior`), by resetting it when training
  begins: the ablation of the fix.
- `--precision float32`: rules bf16 in or out.
- a `method@rate` spec: the learning rate.

    .venv/bin/python benchmarks/wnut16_collapse.py houlsby --zero-bias
    .venv/bin/python benchmarks/wnut16_collapse.py houlsby@3e-3
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

import keras  # noqa: E402
import numpy as np  # noqa: E402
from bbc_methods import parse_spec  # noqa: E402
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from wnut16_data import wnut16_split  # noqa: E402

import keras_adapters as ka  # noqa: E402
from keras_adapters.runs.evaluation import evaluate_run  # noqa: E402


class ZeroBias(keras.callbacks.Callback):
    """Start the head from a zero bias (uniform over the tags), as 0.10 did."""

    def on_train_begin(self, logs=None):
        bias = self.model.output_head.logits.bias
        bias.assign(np.zeros(bias.shape, "float32"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--zero-bias", action="store_true")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--output", default="benchmarks/results/wnut16_collapse.jsonl")
    args = parser.parse_args()
    files = wnut16_split()
    method, lr = parse_spec(args.spec)
    run = tempfile.mkdtemp()
    with Timer() as t:
        model, _ = ka.train_classifier(
            files["train"], run, method=method, learning_rate=lr, validation_split=0.1, seed=0, verbose=0,
            tensorboard=False, epochs=args.epochs, sequence_length=64, precision=args.precision, overwrite=True,
            callbacks=[ZeroBias()] if args.zero_bias else [],
        )
    history = json.load(open(os.path.join(run, "history.json")))
    bias = np.asarray(ka.runs.load_run(run).output_head.logits.bias)
    names = model.class_names
    outside = names.index("O")
    row = {
        "spec": args.spec, "zero_bias": args.zero_bias, "precision": model.dtype_policy.name,
        "learning_rate": lr or model.default_learning_rate, "revision": git_revision(),
        "test_f1": evaluate_run(run, files["test"])["f1"],
        "val_tag_f1": [round(v, 4) for v in history["val_tag_f1"]],
        "val_predicted_classes": history["val_predicted_classes"],
        "loss": [round(v, 4) for v in history["loss"]],
        "o_bias_gap": float(bias[outside] - np.delete(bias, outside).mean()),
        "train_cpu_s": t.cpu, "train_wall_s": t.wall,
    }
    print(json.dumps(row), flush=True)
    with open(args.output, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
