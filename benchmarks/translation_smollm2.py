"""English -> French with SmolLM2-135M-Instruct: zero-shot, our LoRA and Pfeiffer
adapters, and PyTorch + peft LoRA, on the same pairs, weights and prompts.

Data: `examples/bible_translation_data.py` (World English Bible / Louis
Segond 1910, split by book). A seeded sample of `--train` training pairs and
of `--test` test pairs; every row reads the same ones. Each pair is a user
message ("Translate to French: ...") and the answer under the checkpoint's
chat template; the loss covers the answer only. Rows train one epoch, batch
8, AdamW at `--lr` (the same for all LoRA rows; Pfeiffer at its method's
default), no tuning on the test pairs. Our rows batch the shuffled pairs in
order, as the PyTorch loop does; `lora-bucketed` and `pfeiffer-bucketed` batch
pairs of similar length (`bucket_by_sequence_length=True`, the default before 0.25). Scores: sacrebleu's corpus BLEU and
chrF of greedy generations (at most `--max-new-tokens`), computed here for
every row, and the perplexity of the test answers.

Every row is its own process (PyTorch rows in `--torch-python`'s venv).

    .venv/bin/python benchmarks/translation_smollm2.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --torch-python PTENV/bin/python

Writes benchmarks/results/translation_smollm2.json.
"""

import argparse
import json
import math
import os
import random
import sys
import time

from common import machine_description
from common import run_worker

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "examples"))


def _sample(path, count, seed):
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    random.Random(seed).shuffle(records)
    return records[:count]


def keras_worker(method, folder, train, test, lr, max_new, seed):
    import keras

    from keras_adapters.methods.lora import LoRAConfig
    from keras_adapters.models.causal_lm import AdapterCausalLM

    keras.utils.set_random_seed(seed)
    lora = LoRAConfig(rank=8, alpha=16, target_modules=ALL_LINEAR)
    config = {"lora": lora, "lora-bucketed": lora, "pfeiffer": "pfeiffer", "pfeiffer-bucketed": "pfeiffer",
              "none": None}
    model = AdapterCausalLM.from_preset(folder, method=config[method], sequence_length=192)
    seconds = 0.0
    if method != "none":
        model.compile(learning_rate=lr if method.startswith("lora") else None)
        start = time.perf_counter()
        data = model.dataset(train, batch_size=8, shuffle=True, chat=True, seed=seed,
                             bucket_by_sequence_length=method.endswith("-bucketed"))
        model.fit(data, epochs=1, verbose=2)
        seconds = time.perf_counter() - start
    report = model.perplexity(test, chat=True)
    start = time.perf_counter()
    generations = model.generate([r["prompt"] for r in test], max_new_tokens=max_new, chat=True, batch_size=8)
    return {"generations": generations, "perplexity": report["perplexity"], "train_seconds": seconds,
            "generate_seconds": time.perf_counter() - start}


ALL_LINEAR = ("query", "key", "value", "attention_output", "feedforward_gate_dense",
              "feedforward_intermediate_dense", "feedforward_output_dense")


def torch_worker(folder, train, test, lr, max_new, seed):
    import peft
    import torch
    from transformers import AutoTokenizer
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(
        task_type=peft.TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))

    def encode(record):
        user = [{"role": "user", "content": record["prompt"]}]
        prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        whole = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": record["completion"]}],
                                              tokenize=False)
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(whole[len(prompt):], add_special_tokens=False)["input_ids"]
        ids = (p + c)[:193]
        return ids, ([-100] * len(p) + c)[:193], prompt

    def batch(rows):
        width = max(len(ids) for ids, _, _ in rows)
        ids = torch.full((len(rows), width), 2, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (x, y, _) in enumerate(rows):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        return ids, labels, mask

    encoded = [encode(r) for r in train]
    random.Random(seed).shuffle(encoded)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    model.train()
    start = time.perf_counter()
    for i in range(0, len(encoded), 8):
        ids, labels, mask = batch(encoded[i:i + 8])
        optimizer.zero_grad()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    total, count = 0.0, 0
    tests = [encode(r) for r in test]
    with torch.inference_mode():
        for i in range(0, len(tests), 8):
            ids, labels, mask = batch(tests[i:i + 8])
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            target = labels[:, 1:]
            losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100,
                                                       reduction="sum")
            total += float(losses)
            count += int((target != -100).sum())
    tokenizer.padding_side = "left"  # decoder generation continues every row at the same position
    generations = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(tests), 8):
            prompts = [prompt for _, _, prompt in tests[i:i + 8]]
            inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False, eos_token_id=2, pad_token_id=2)
            generations += tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return {"generations": generations, "perplexity": math.exp(total / count), "train_seconds": seconds,
            "generate_seconds": time.perf_counter() - start}


def worker(argv):
    row, folder, data, lr, max_new, seed = argv[0], argv[1], json.load(open(argv[2])), float(argv[3]), int(argv[4]), int(argv[5])
    if row == "torch-lora":
        result = torch_worker(folder, data["train"], data["test"], lr, max_new, seed)
    else:
        result = keras_worker(row, folder, data["train"], data["test"], lr, max_new, seed)
    print(json.dumps(result))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0, help="initialisation and order of training")
    parser.add_argument("--data-seed", type=int, default=0, help="the sample of training and test pairs")
    parser.add_argument("--rows", default="none,lora,pfeiffer,torch-lora")
    args = parser.parse_args()
    import sacrebleu
    from bible_translation_data import translation_split

    from keras_adapters.io import presets

    folder = presets.resolve_preset(args.gguf)
    split = translation_split()
    data = {"train": _sample(split["train"], args.train, args.data_seed),
            "test": _sample(split["test"], args.test, args.data_seed)}
    data_file = os.path.join(os.path.dirname(HERE), "results", f"translation_smollm2_data{args.data_seed}.json")
    with open(data_file, "w") as f:
        json.dump(data, f)
    references = [r["completion"] for r in data["test"]]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # One file per (seed, data seed): a file's rows share both, so they read the same pairs.
    suffix = (f"_seed{args.seed}" if args.seed else "") + (f"_data{args.data_seed}" if args.data_seed else "")
    name = f"translation_smollm2{suffix}.json"
    out = os.path.join(os.path.dirname(HERE), "results", name)
    rows = _earlier_rows(out, args)
    for row in args.rows.split(","):
        python = args.torch_python if row.startswith("torch") else sys.executable
        result = run_worker(row, [python, HERE, "--worker", row, folder, data_file, str(args.lr),
                                  str(args.max_new_tokens), str(args.seed)], env)
        result["bleu"] = sacrebleu.corpus_bleu(result["generations"], [references]).score
        result["chrf"] = sacrebleu.corpus_chrf(result["generations"], [references]).score
        rows[row] = {**result, "machine": machine_description()}  # rows kept from earlier runs keep theirs
        print(row, json.dumps({k: v for k, v in result.items() if k != "generations"}), flush=True)
        # Written after every row: a run stopped part-way keeps the rows it finished.
        report = {"machine": machine_description(), "settings": vars(args), "rows": rows}
        with open(out, "w") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)


def _earlier_rows(path, args):
    """Rows an earlier run with the same data settings recorded (`--rows` adds to them)."""
    if not os.path.exists(path):
        return {}
    earlier = json.load(open(path))
    same = ("train", "test", "lr", "max_new_tokens", "seed", "data_seed")
    settings = {"data_seed": earlier["settings"]["seed"], **earlier["settings"]}  # files before --data-seed
    if any(settings.get(key) != getattr(args, key) for key in same):
        return {}
    return earlier["rows"]


if __name__ == "__main__":
    main()
