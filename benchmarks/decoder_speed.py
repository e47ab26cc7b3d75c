"""A decoder with LoRA (SmolLM2-135M-Instruct, Gemma 3 270M): keras-adapters
against PyTorch + peft, side by side in one run on this machine, for
training and greedy generation.

Both load the same weights: the Hugging Face folder the GGUF file converts
into (PyTorch reads it with transformers' `AutoModelForCausalLM`). LoRA r8,
alpha 16 on every projection of every layer (peft's `"all-linear"`), float32.

- training: one AdamW step on a fixed batch of 8 x 128 tokens whose second
  half is the completion (ours: `train_on_batch`; PyTorch: labels -100 on
  the prompt half); tokens/s counts all 8 x 128 input tokens;
- generation: greedy decoding of a batch of 4 prompts of 64 tokens (the
  same ids for both: texts whose tokenization gives exactly these ids), the
  adapter active and unmerged. Ours three ways: `AdapterCausalLM.generate`
  (`keras`, the decoding loop compiled with XLA), the exported SavedModel's
  `generate` signature (`saved`, one adapter), and a SavedModel serving 4
  LoRA adapters with each row naming another (`routed`); PyTorch:
  `model.generate`, its KV cache. The prompt phase is timed as generating 1
  token; the decode phase is the rest of generating 33 (32 more tokens per row).

Each variant is its own process; variants alternate (A B C D, A B C D, ...),
each process times several calls with process CPU time and wall time, and
the report takes medians over every timed call of every round.

    .venv/bin/python benchmarks/decoder_speed.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --torch-python /path/to/torch-venv/bin/python --rounds 3
    .venv/bin/python benchmarks/decoder_speed.py --gguf data/cache/gemma-3-270m-q4_k_m.gguf ...

Writes benchmarks/results/decoder_speed.json (Llama family: SmolLM2) or
decoder_speed_<family>.json.
"""

import argparse
import json
import os
import sys

from common import machine_description
from common import median
from common import run_worker
from common import time_calls

HERE = os.path.abspath(__file__)
BATCH, LENGTH, GEN_BATCH, PROMPT, NEW = 8, 128, 4, 64, 32
ALL_LINEAR_HF = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ALL_LINEAR = ("query", "key", "value", "attention_output", "feedforward_gate_dense",
              "feedforward_intermediate_dense", "feedforward_output_dense")


def _tokens(rows, length, seed=0):
    import numpy as np

    return np.random.RandomState(seed).randint(100, 40000, size=(rows, length)).astype("int32")


def _lora_b_nonzero(weights, seed=1):
    """LoRA B starts at zero; give it values so that the adapter computes something."""
    import numpy as np

    rng = np.random.RandomState(seed)
    return [rng.normal(0, 0.01, w.shape).astype("float32") for w in weights]


def stable_prompts(tokenizer, rows=GEN_BATCH, length=PROMPT, seed=0):
    """Token-id rows of `length` that a text round-trips to exactly (random
    ids often do not: the tokenizer merges them differently)."""
    import numpy as np

    rng, found = np.random.RandomState(seed), []
    while len(found) < rows:
        ids = [int(t) for t in np.asarray(tokenizer(tokenizer.detokenize(rng.randint(100, 40000, 2 * length))))]
        ids = ids[:length]
        if len(ids) == length and [int(t) for t in np.asarray(tokenizer(tokenizer.detokenize(ids)))] == ids:
            found.append(ids)
    return found


def _texts(model, prompts):
    """The texts whose prompt ids (the start token first, where the checkpoint adds one) are `prompts`."""
    start = 1 if model.start_token_id is not None else 0
    texts = [str(model.tokenizer.detokenize(row[start:])) for row in prompts]
    assert [model._prompt_ids(t) for t in texts] == prompts, "the prompts do not round-trip"
    return texts


def saved_worker(what, folder, steps, prompts):
    """The exported SavedModel's `generate`: one adapter (`saved`) or 4 routed (`routed`);
    `..._xla`: exported with the decoding loop compiled by XLA."""
    import tempfile

    import tensorflow as tf

    from keras_adapters.core import injection
    from keras_adapters.methods.lora import LoRAConfig
    from keras_adapters.models.causal_lm import AdapterCausalLM
    from keras_adapters.serving.generator import export_generator

    kind, phase = what.split("-")
    xla = kind.endswith("_xla")
    kind = kind.removesuffix("_xla")
    model = AdapterCausalLM.from_preset(folder, method=None, sequence_length=LENGTH)
    names = [f"a{i}" for i in range(GEN_BATCH if kind == "routed" else 1)]
    for seed, name in enumerate(names):
        model.add_adapter(name, LoRAConfig(rank=8, alpha=16, target_modules=ALL_LINEAR))
        lora_b = [w for w in injection.adapter_weights_by_key(model.backbone, name).values()
                  if w.path.endswith("lora_b")]
        for w, value in zip(lora_b, _lora_b_nonzero(lora_b, seed + 1)):
            w.assign(value)
    texts = _texts(model, prompts)
    out = tempfile.mkdtemp()
    if kind == "routed":
        path = export_generator(model, out, names=names, xla=xla)
    else:
        model.set_active_adapters(names[0])
        path = export_generator(model, out, xla=xla)
    generate = tf.saved_model.load(path).signatures["generate"]
    request = {"prompt": tf.constant(texts), "max_new_tokens": tf.constant(1 if phase == "prompt" else 1 + NEW),
               "temperature": tf.constant(0.0), "top_k": tf.constant(0), "top_p": tf.constant(1.0)}
    if kind == "routed":
        request["adapter"] = tf.constant(names)
    return time_calls(lambda: generate(**request), steps, warmup=2)


def keras_worker(what, folder, steps, prompts):
    import numpy as np

    from keras_adapters.methods.lora import LoRAConfig
    from keras_adapters.models.causal_lm import AdapterCausalLM

    model = AdapterCausalLM.from_preset(folder, method=LoRAConfig(rank=8, alpha=16, target_modules=ALL_LINEAR),
                                        sequence_length=LENGTH)
    if what == "train":
        ids = _tokens(BATCH, LENGTH + 1)
        x = {"token_ids": ids[:, :-1], "padding_mask": np.ones((BATCH, LENGTH), bool)}
        weights = np.zeros((BATCH, LENGTH), "float32")
        weights[:, LENGTH // 2:] = 1
        model.compile(learning_rate=1e-4)
        return time_calls(lambda: model.train_on_batch(x, ids[:, 1:], sample_weight=weights), steps)
    lora_b = [w for w in model.trainable_weights if w.path.endswith("lora_b")]
    for w, value in zip(lora_b, _lora_b_nonzero(lora_b)):
        w.assign(value)
    texts = _texts(model, prompts)
    new = 1 if what == "prompt" else 1 + NEW
    return time_calls(lambda: model.generate(texts, max_new_tokens=new, stop_token_ids=None, batch_size=GEN_BATCH),
                      steps, warmup=2)


def torch_worker(what, folder, steps, prompts):
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=8, lora_alpha=16, lora_dropout=0.0,
                             target_modules=ALL_LINEAR_HF)
    model = peft.get_peft_model(model, config)
    if what == "train":
        ids = torch.tensor(_tokens(BATCH, LENGTH), dtype=torch.long)
        labels = ids.clone()
        labels[:, : LENGTH // 2] = -100
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        model.train()

        def step():
            optimizer.zero_grad()
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()

        return time_calls(step, steps)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p, value in zip(lora_b, _lora_b_nonzero(lora_b)):
            p.copy_(torch.from_numpy(value))
    model.eval()
    ids = torch.tensor(prompts, dtype=torch.long)
    new = 1 if what == "prompt" else 1 + NEW

    def step():
        with torch.inference_mode():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                           min_new_tokens=new, do_sample=False, pad_token_id=model.config.eos_token_id)

    return time_calls(step, steps, warmup=2)


def worker(argv):
    framework, what, folder, steps, prompts = argv[0], argv[1], argv[2], int(argv[3]), json.load(open(argv[4]))
    function = {"keras": keras_worker, "saved": saved_worker, "torch": torch_worker}[framework]
    print(json.dumps(function(what, folder, steps, prompts)))


#: Variant -> (framework, what): training, then the two phases of each way of generating.
VARIANTS = {
    **{f"{fw}/train": (fw, "train") for fw in ("keras", "torch")},
    **{f"{fw}/{phase}": (fw, phase) for phase in ("prompt", "decode") for fw in ("keras", "torch")},
    **{f"{kind}/{phase}": ("saved", f"{kind}-{phase}") for phase in ("prompt", "decode")
       for kind in ("saved", "routed", "saved_xla", "routed_xla")},
}


def summarize(results):
    """tokens/s (CPU and wall) of each variant, from medians of every call."""
    report = {}
    for name, runs in results.items():
        cpu = median([c for r in runs for c in r["cpu"]])
        wall = median([w for r in runs for w in r["wall"]])
        report[name] = {"cpu_seconds": cpu, "wall_seconds": wall}
    for framework in ("keras", "torch"):
        if f"{framework}/train" not in report:
            continue
        train = report[f"{framework}/train"]
        train["tokens_per_cpu_second"] = BATCH * LENGTH / train["cpu_seconds"]
        train["tokens_per_wall_second"] = BATCH * LENGTH / train["wall_seconds"]
    for framework in ("keras", "torch", "saved", "routed", "saved_xla", "routed_xla"):
        if f"{framework}/prompt" not in report or f"{framework}/decode" not in report:
            continue
        prompt, decode = report[f"{framework}/prompt"], report[f"{framework}/decode"]
        prompt["prompt_tokens_per_cpu_second"] = GEN_BATCH * PROMPT / prompt["cpu_seconds"]
        prompt["prompt_tokens_per_wall_second"] = GEN_BATCH * PROMPT / prompt["wall_seconds"]
        for clock in ("cpu", "wall"):
            extra = decode[f"{clock}_seconds"] - prompt[f"{clock}_seconds"]
            decode[f"decode_tokens_per_{clock}_second"] = GEN_BATCH * NEW / extra
    return report


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", default="", help="comma-separated variant names (keras/train, torch/decode, ...)")
    parser.add_argument("--output", default=None, help="the results file's name in benchmarks/results "
                                                         "(default: decoder_speed[_<family>].json)")
    args = parser.parse_args()
    from keras_adapters.backbones.family import family_of_checkpoint
    from keras_adapters.backbones.huggingface import model_type
    from keras_adapters.backbones.huggingface import start_token_id
    from keras_adapters.io import presets

    folder = presets.resolve_preset(args.gguf)
    family = family_of_checkpoint(model_type(folder))
    stem = "decoder_speed" if family.name == "llama" else f"decoder_speed_{family.name}"
    prompts_file = os.path.join(os.path.dirname(HERE), "results", f"{stem}_prompts.json")
    tokenizer = family.tokenizer(folder)
    start = start_token_id(folder, tokenizer)  # the same ids for both: PyTorch's rows start with it too
    prompts = stable_prompts(tokenizer, length=PROMPT - (start is not None))
    with open(prompts_file, "w") as f:
        json.dump([([start] if start is not None else []) + row for row in prompts], f)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    variants = {name: (args.torch_python if fw == "torch" else sys.executable, fw, what)
                for name, (fw, what) in VARIANTS.items()}
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    results = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, (python, fw, what) in variants.items():
            argv = [python, HERE, "--worker", fw, what, folder, str(args.steps), prompts_file]
            results[name].append(run_worker(name, argv, env))
            print(round_ + 1, name, json.dumps({k: median(v) for k, v in results[name][-1].items()}), flush=True)
    report = {"machine": machine_description(), "rounds": args.rounds, "steps": args.steps,
              "batch": {"train": [BATCH, LENGTH], "generate": [GEN_BATCH, PROMPT, NEW]},
              "results": results, "summary": summarize(results)}
    out = os.path.join(os.path.dirname(HERE), "results", args.output or f"{stem}.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
