"""Does the guarantee mean something? A membership-inference attack on an
adapter that memorises its training data, with and without DP-SGD.

`dp_bbc.py`'s rows train 3 epochs on thousands of examples: the adapters
hardly overfit and the loss-threshold attack finds nothing (AUC 0.50-0.53)
even without privacy, so those rows cannot show privacy at work. Here the
training set is small and the schedule long, so that a non-private adapter
memorises it: 500 movie-review sentences (250 per class, the first of
`examples/vader_movie_reviews_data.py`'s training split), 30 epochs, expected
batch 32, length 64, LoRA at its default rate. The attack's non-members are
500 sentences of the held-out split (250 per class). Rows: no privacy, then
DP-SGD at epsilon 8 and 1 (delta 1e-5, clip norm 1, RDP; Poisson sampling,
dropout off), each in its own process (`dp_bbc.py --worker`).

The attack (as `dp_bbc.py`): "member" when an example's loss under the
adapter is below a threshold; its AUC over all thresholds is the chance that
a random member has a lower loss than a random non-member (0.5: the loss
tells nothing; DP-SGD at (epsilon, delta) bounds the attack's true-positive
rate by e^epsilon times its false-positive rate plus delta at every threshold).

    .venv/bin/python benchmarks/dp_membership.py [--rows none,8,1] [--seeds 0]

Writes benchmarks/results/dp_membership.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import minilm_env  # noqa: E402
from dp_bbc import split  # noqa: E402

HERE = os.path.abspath(__file__)
PER_CLASS, EPOCHS, BATCH, LENGTH = 250, 30, 32, 64
RESULTS = os.path.join(os.path.dirname(HERE), "results", "dp_membership.json")


def subset(source, target, per_class):
    """The first `per_class` files (sorted) of each class folder, copied."""
    for name in sorted(os.listdir(source)):
        os.makedirs(os.path.join(target, name), exist_ok=True)
        for f in sorted(os.listdir(os.path.join(source, name)))[:per_class]:
            shutil.copy(os.path.join(source, name, f), os.path.join(target, name, f))
    return target


def row(epsilon, seed, train_dir, test_dir):
    worker = os.path.join(os.path.dirname(HERE), "dp_bbc.py")
    argv = [sys.executable, worker, "--worker", "--method", "lora", "--epsilon", epsilon, "--seed", str(seed),
            "--train", train_dir, "--test", test_dir, "--length", str(LENGTH), "--batch-size", str(BATCH),
            "--epochs", str(EPOCHS)]
    out = subprocess.run(argv, capture_output=True, text=True, env=minilm_env(), check=False)
    if out.returncode != 0:
        raise SystemExit(f"epsilon {epsilon} seed {seed} failed:\n{out.stderr[-3000:]}")
    return {"revision": git_revision(), **json.loads(out.stdout.strip().splitlines()[-1])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="none,8,1", help="epsilons ('none': no privacy)")
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    train_all, test_all = split(tempfile.mkdtemp(), "movies")
    work = tempfile.mkdtemp()
    train_dir = subset(train_all, os.path.join(work, "train"), PER_CLASS)
    test_dir = subset(test_all, os.path.join(work, "test"), PER_CLASS)
    saved = json.load(open(RESULTS)) if os.path.isfile(RESULTS) else {"rows": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for epsilon in args.rows.split(","):
            result = row(epsilon, seed, train_dir, test_dir)
            print(json.dumps(result), flush=True)
            saved["rows"] = [r for r in saved["rows"] if (r["epsilon_target"], r["seed"]) != (epsilon, seed)]
            saved["rows"].append(result)
            saved.update(machine=machine_description(), members=2 * PER_CLASS, non_members=2 * PER_CLASS,
                         epochs=EPOCHS, batch_size=BATCH, sequence_length=LENGTH, data="movies")
            os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
            json.dump(saved, open(RESULTS, "w"), indent=1)


if __name__ == "__main__":
    main()
