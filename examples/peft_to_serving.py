"""Bring your PyTorch adapter: a peft LoRA trained in PyTorch on BBC News, converted, served.

Needs the PyTorch side (CPU wheel): `.venv/bin/pip install -e ".[torch-parity]"`.

1. PyTorch: MiniLM as `BertForSequenceClassification` + a peft LoRA (rank 8 on query/value, the
   classifier trained too), trained on the stratified 80% of BBC News (seed 0).
2. `keras-adapters convert` -> our adapter folder; its probabilities on the held-out 20% against
   PyTorch's.
3. `keras-adapters export --format saved_model` -> a fresh TensorFlow-only process loads the
   SavedModel as TF Serving does and answers the raw texts (`serving_default`).
4. `keras-adapters export --format tflite --quantize dynamic` -> LiteRT's interpreter, int8 weights.

Prints, at each step, the largest probability difference from PyTorch and how many labels agree.

    .venv/bin/python examples/peft_to_serving.py [--workdir runs/peft_bbc] [--epochs 3]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bbc_news_demo import bbc_news_folder  # noqa: E402
from bbc_news_demo import read_class_folders as read_split  # noqa: E402


def train_in_pytorch(preset, texts, labels, num_labels, folder, epochs, length=128, batch=16):
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(preset)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(preset, num_labels=num_labels)
    model = peft.get_peft_model(base, peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"],
                                                      lora_dropout=0.1, task_type="SEQ_CLS"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(texts))
        for start in range(0, len(texts), batch):
            idx = order[start:start + batch]
            enc = tokenizer([texts[i] for i in idx], truncation=True, max_length=length, padding=True,
                            return_tensors="pt")
            optimizer.zero_grad()
            model(**enc, labels=torch.tensor(labels[idx])).loss.backward()
            optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    return model, tokenizer


def pytorch_probabilities(model, tokenizer, texts, length=128, batch=64):
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            enc = tokenizer(texts[start:start + batch], truncation=True, max_length=length, padding=True,
                            return_tensors="pt")
            out.append(torch.softmax(model(**enc).logits, -1).numpy())
    return np.concatenate(out)


SERVE = """
import json, sys, numpy as np, tensorflow as tf
import tensorflow_text  # noqa: F401  (the text ops TF Serving has built in)
texts = json.load(open(sys.argv[2]))
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
out = [serve(text=tf.constant(texts[i:i + 64]))["probabilities"].numpy() for i in range(0, len(texts), 64)]
np.save(sys.argv[3], np.concatenate(out))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="runs/peft_bbc")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="reuse the PyTorch adapter trained by a previous run")
    args = parser.parse_args()

    from keras_adapters import cli
    from keras_adapters import default_preset
    from keras_adapters.io.text_data import split_directory
    from keras_adapters.serving import export

    preset = default_preset()
    split = os.path.join(args.workdir, "data")
    shutil.rmtree(split, ignore_errors=True)  # the same split again (seed 0)
    train_dir, test_dir = split_directory(bbc_news_folder(), split, test_fraction=0.2, seed=0)
    train_texts, train_labels, names = read_split(train_dir)
    test_texts, test_labels, _ = read_split(test_dir)
    peft_dir, ours = os.path.join(args.workdir, "peft"), os.path.join(args.workdir, "adapter")

    cached = os.path.join(args.workdir, "pytorch_probabilities.npy")
    if args.reuse and os.path.isfile(cached):
        reference = np.load(cached)
    else:
        start = time.time()
        model, tokenizer = train_in_pytorch(preset, train_texts, train_labels, len(names), peft_dir, args.epochs)
        reference = pytorch_probabilities(model, tokenizer, test_texts)
        np.save(cached, reference)
        print(f"PyTorch + peft: trained in {time.time() - start:.0f} s")
    rows = {"pytorch": reference}

    if os.path.isdir(ours):
        shutil.rmtree(ours)
    assert cli.main(["convert", peft_dir, "-o", ours]) == 0
    from keras_adapters import AdapterModel

    keras_model = AdapterModel.from_adapter(ours)
    rows["keras-adapters"] = keras_model.predict(test_texts, verbose=0, batch_size=64)

    saved = os.path.join(args.workdir, "saved_model")
    shutil.rmtree(saved, ignore_errors=True)
    assert cli.main(["export", ours, "--format", "saved_model", "-o", saved, "--version", "1", "--no-warmup"]) == 0
    texts_file, out_file = os.path.join(args.workdir, "texts.json"), os.path.join(args.workdir, "served.npy")
    json.dump(test_texts, open(texts_file, "w"))
    subprocess.run([sys.executable, "-c", SERVE, os.path.join(saved, "1"), texts_file, out_file], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    rows["SavedModel (fresh process)"] = np.load(out_file)

    lite = os.path.join(args.workdir, "tflite")
    assert cli.main(["export", ours, "--format", "tflite", "--quantize", "dynamic", "-o", lite]) == 0
    runner = export.tflite_signature_runner(os.path.join(lite, "model.tflite"))
    tokens = {k: np.asarray(v) for k, v in keras_model.preprocessor(test_texts).items()}
    rows["TFLite int8 weights"] = np.concatenate(
        [export.run_tflite(runner, {k: v[i:i + 1] for k, v in tokens.items()}) for i in range(len(test_texts))]
    )

    report = {}
    print(f"\n{len(test_texts)} held-out articles; differences from PyTorch's probabilities:")
    for name, probs in rows.items():
        report[name] = {
            "accuracy": float((probs.argmax(1) == test_labels).mean()),
            "max_abs_difference": float(np.abs(probs - reference).max()),
            "same_label": float((probs.argmax(1) == reference.argmax(1)).mean()),
        }
        r = report[name]
        print(f"  {name:28s} accuracy {r['accuracy']:.4f}  max |dp| {r['max_abs_difference']:.2e}  "
              f"same label {r['same_label']:.4f}")
    json.dump(report, open(os.path.join(args.workdir, "agreement.json"), "w"), indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
