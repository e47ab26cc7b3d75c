"""Routed signatures beyond classification: `tag`, `label` and `answer` over
several adapters of one task in one SavedModel, against the alternatives.

MiniLM (all-MiniLM-L6-v2), Houlsby adapters with random non-zero weights
(speed does not depend on their values), 4 per task; each task's adapters
differ in their heads (tags, labels, thresholds). Inputs: 32 real WNUT-16 test
tweets (tag, label) at 64 tokens, 16 SQuAD questions with their contexts
(answer, 256-token windows). Each row goes to one of the task's adapters in
turn.

Variants, SavedModels loaded in this process with `tf.saved_model.load`,
traced once before timing, alternated A B C in every round, medians of wall
and process CPU time:

- `single`: one adapter's own SavedModel on the whole batch (the ceiling);
- `routed`: the multi-adapter SavedModel's routed signature, one call;
- `sub_batches`: the same SavedModel, one `<verb>_<name>` call per adapter
  (its rows only): what a client does without routing.

Each routed row is also checked against its adapter's own SavedModel.

    .venv/bin/python benchmarks/routed_tasks.py --workdir /tmp/routed_tasks
"""

import argparse
import json
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (the tokenizer ops the SavedModels use)
from common import Timer  # noqa: E402
from common import git_revision  # noqa: E402
from common import machine_description  # noqa: E402
from common import median  # noqa: E402

ADAPTERS = 4
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]
LABELS = ["person", "geo-loc", "company", "product", "other", "sportsteam"]
TASKS = {  # routed signature: (task, per-adapter head options, sequence length)
    "tag": ("token_classification", lambda i: {"class_names": TAGS[: 3 + 2 * (i % 4)]}, 64),
    "label": ("multi_label_classification",
              lambda i: {"class_names": LABELS[: 3 + i % 4], "thresholds": [0.3 + 0.1 * (i % 4)] * (3 + i % 4)}, 64),
    "answer": ("question_answering", lambda i: {"max_answer_length": 10 + 10 * (i % 2)}, 256),
}
VERBS = {"tag": "tag", "label": "label", "answer": "answer"}


def inputs():
    tweets = [json.loads(line)["text"] for line in open("data/cache/wnut16/test.multilabel.jsonl", encoding="utf-8")]
    squad = json.load(open("data/cache/squad/test_600.json", encoding="utf-8"))["data"]
    pairs = [(q["question"], p["context"]) for a in squad for p in a["paragraphs"] for q in p["qas"]]
    questions, contexts = zip(*pairs[::37][:16])
    return {"tag": {"text": tweets[:32]}, "label": {"text": tweets[32:64]},
            "answer": {"question": list(questions), "context": list(contexts)}}


def names(routed):
    return [f"{routed}{i}" for i in range(ADAPTERS)]


def prepare(workdir):
    import keras

    import keras_adapters as ka
    from keras_adapters.core.injection import adapter_weights

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    for routed, (task, head, length) in TASKS.items():
        model = ka.AdapterModel.from_preset("default", method=None, sequence_length=length)
        for i, name in enumerate(names(routed)):
            model.add_adapter(name, "houlsby", task=task, **head(i))
        for w in adapter_weights(model.backbone):
            w.assign(w.numpy() + 0.02 * rng.standard_normal(w.shape).astype("float32"))
        for h in model.heads.values():
            for w in h.weights:
                w.assign(rng.standard_normal(w.shape).astype("float32"))
        shutil.rmtree(f"{workdir}/{routed}", ignore_errors=True)
        ka.export_multi_adapter_saved_model(model, f"{workdir}/{routed}/multi")
        for name in names(routed):
            model.save_adapter(f"{workdir}/{routed}/adapters/{name}", name=name)
            alone = ka.AdapterModel.from_adapter(f"{workdir}/{routed}/adapters/{name}")
            ka.export_saved_model(alone, f"{workdir}/{routed}/single/{name}")


class Variants:
    def __init__(self, workdir, routed):
        self.routed_name = routed
        self.multi = tf.saved_model.load(f"{workdir}/{routed}/multi/1")
        self.singles = {n: tf.saved_model.load(f"{workdir}/{routed}/single/{n}/1") for n in names(routed)}

    def single(self, batch, rows):
        return self.singles[names(self.routed_name)[0]].signatures["serving_default"](**_tensors(batch))

    def routed(self, batch, rows):
        return self.multi.signatures[self.routed_name](**_tensors(batch), adapter=tf.constant(rows))

    def sub_batches(self, batch, rows):
        out = {}
        for name in sorted(set(rows)):
            idx = [i for i, r in enumerate(rows) if r == name]
            part = {k: [v[i] for i in idx] for k, v in batch.items()}
            out[name] = self.multi.signatures[f"{VERBS[self.routed_name]}_{name}"](**_tensors(part))
        return out

    def own(self, batch, rows):
        """Each row through its adapter's own SavedModel (the reference)."""
        return [self.singles[r].signatures["serving_default"](**_tensors({k: [v[i]] for k, v in batch.items()}))
                for i, r in enumerate(rows)]


def _tensors(batch):
    return {k: tf.constant(v) for k, v in batch.items()}


def agreement(routed, own, key):
    """Rows of the routed answer equal to the adapter's own answer (on `key`)."""
    same = 0
    for i, alone in enumerate(own):
        a, b = routed[key].numpy()[i], alone[key].numpy()[0]
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        width = min(len(a), len(b))
        same += bool(np.all(a[:width] == b[:width]) if a.dtype.kind in "OSU" else np.allclose(a[:width], b[:width], atol=1e-4))
    return same


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="/tmp/routed_tasks")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--skip-prepare", action="store_true")
    parser.add_argument("--output", default="benchmarks/results/routed_tasks.json")
    args = parser.parse_args()
    if not args.skip_prepare:
        prepare(args.workdir)
    batches = inputs()
    results = []
    for routed in TASKS:
        variants = Variants(args.workdir, routed)
        batch = batches[routed]
        rows = [names(routed)[i % ADAPTERS] for i in range(len(next(iter(batch.values()))))]
        key = {"tag": "entity_type", "label": "labels", "answer": "answer"}[routed]
        checked = agreement(variants.routed(batch, rows), variants.own(batch, rows), key)
        methods = ("single", "routed", "sub_batches")
        for m in methods:  # traced and warm
            getattr(variants, m)(batch, rows)
        times = {m: [] for m in methods}
        for _ in range(args.rounds):
            for m in methods:
                with Timer() as t:
                    tf.nest.map_structure(lambda x: x.numpy(), getattr(variants, m)(batch, rows))
                times[m].append(t)
        row = {"signature": routed, "rows": len(rows), "adapters": ADAPTERS, "rows_equal_to_own_model": checked}
        for m in methods:
            row[f"{m}_wall_ms"] = 1000 * median([t.wall for t in times[m]])
            row[f"{m}_cpu_ms"] = 1000 * median([t.cpu for t in times[m]])
        print(json.dumps(row), flush=True)
        results.append(row)
    with open(args.output, "w") as f:
        json.dump({"machine": machine_description(), "revision": git_revision(), "rounds": args.rounds,
                   "rows": results}, f, indent=2)


if __name__ == "__main__":
    main()
