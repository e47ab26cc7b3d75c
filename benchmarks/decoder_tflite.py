"""SmolLM2-135M-Instruct with LoRA as a TFLite decoder (`start` and `step`
signatures, the loop in Python as an app's), against our Keras `generate` and
PyTorch + peft, batch 1, in one run on this machine.

The same LoRA as `decoder_speed.py` (r8, alpha 16, every projection, B
nonzero, unmerged), one prompt of 64 tokens (the first of
`decoder_speed.py`'s stable prompts), greedy. The TFLite model has
`sequence_length` 128 (a cache of 128 columns) and comes in float32 and with
dynamic-range int8 weights (`--quantize dynamic`). Prompt phase: one `step`
over the prompt (TFLite) or generating 1 token; decode phase: 32 more tokens
(TFLite: 32 `step` calls, the cache in and out of each). Each variant is its own process; variants alternate; medians over
every timed call. Also recorded: whether each variant's 32 greedy tokens are
the Keras model's, and the files' sizes.

    .venv/bin/python benchmarks/decoder_tflite.py --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --torch-python /path/to/torch-venv/bin/python --rounds 2

Writes benchmarks/results/decoder_tflite.json.
"""

import argparse
import json
import os
import sys
import tempfile

from common import machine_description
from common import median
from common import run_worker
from common import time_calls

HERE = os.path.abspath(__file__)
sys.path.insert(0, os.path.dirname(HERE))
from decoder_speed import ALL_LINEAR, ALL_LINEAR_HF, PROMPT, _lora_b_nonzero, stable_prompts  # noqa: E402

NEW, LENGTH = 32, 128


def _model(folder):
    from keras_adapters.methods.lora import LoRAConfig
    from keras_adapters.models.causal_lm import AdapterCausalLM

    model = AdapterCausalLM.from_preset(folder, method=LoRAConfig(rank=8, alpha=16, target_modules=ALL_LINEAR))
    lora_b = [w for w in model.trainable_weights if w.path.endswith("lora_b")]
    for w, value in zip(lora_b, _lora_b_nonzero(lora_b)):
        w.assign(value)
    return model


def tflite_worker(quantize, folder, steps, ids):
    import numpy as np

    from keras_adapters.serving import decoder_tflite

    out = tempfile.mkdtemp()
    path = decoder_tflite.export_decoder_tflite(_model(folder), out, LENGTH, quantize)
    start, step = decoder_tflite.runners(path)
    state = start()
    prompt = np.array([ids], np.int32)

    def prefill():
        return step(token_ids=prompt, index=state["index"], cache=state["cache"])

    def decode_all():
        out, generated = first, []
        for _ in range(NEW):
            token = int(np.argmax(out["logits"][0]))
            generated.append(token)
            out = step(token_ids=np.array([[token]], np.int32), index=out["index"], cache=out["cache"])
        return generated

    first = prefill()
    timings = {"prompt": time_calls(prefill, steps, warmup=1), "decode": time_calls(decode_all, steps, warmup=1)}
    return {**timings, "tokens": decode_all(), "bytes": os.path.getsize(path)}


def keras_worker(folder, steps, ids):
    model = _model(folder)
    text = str(model.tokenizer.detokenize(ids))
    assert model._prompt_ids(text) == ids
    timings = {phase: time_calls(lambda n=n: model.generate([text], max_new_tokens=n, stop_token_ids=None,
                                                            batch_size=1), steps, warmup=2)
               for phase, n in (("prompt", 1), ("decode", 1 + NEW))}
    return {**timings, "tokens": model._generated_ids([text], NEW, None)[0]}


def torch_worker(folder, steps, ids):
    import peft
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = peft.get_peft_model(model, peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=8, lora_alpha=16,
                                                       lora_dropout=0.0, target_modules=ALL_LINEAR_HF))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p, value in zip(lora_b, _lora_b_nonzero(lora_b)):
            p.copy_(torch.from_numpy(value))
    model.eval()
    prompt = torch.tensor([ids], dtype=torch.long)

    def generate(new):
        with torch.inference_mode():
            return model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                                  min_new_tokens=new, do_sample=False, pad_token_id=2)

    timings = {phase: time_calls(lambda n=n: generate(n), steps, warmup=2) for phase, n in (("prompt", 1),
                                                                                            ("decode", 1 + NEW))}
    return {**timings, "tokens": generate(NEW)[0, len(ids):].tolist()}


def worker(argv):
    variant, folder, steps, ids = argv[0], argv[1], int(argv[2]), json.loads(argv[3])
    if variant.startswith("tflite"):
        result = tflite_worker("dynamic" if variant.endswith("int8") else "none", folder, steps, ids)
    else:
        result = {"keras": keras_worker, "torch": torch_worker}[variant](folder, steps, ids)
    print(json.dumps(result))


def summarize(results):
    report = {}
    for name, runs in results.items():
        row = {}
        for phase in ("prompt", "decode"):
            for clock in ("cpu", "wall"):
                row[f"{phase}_{clock}_seconds"] = median([t for r in runs for t in r[phase][clock]])
        row["prompt_tokens_per_wall_second"] = PROMPT / row["prompt_wall_seconds"]
        row["prompt_tokens_per_cpu_second"] = PROMPT / row["prompt_cpu_seconds"]
        # Keras and PyTorch time 1 + NEW tokens for the decode phase (the prompt phase included): take it out.
        extra = {c: row[f"decode_{c}_seconds"] - (0 if name.startswith("tflite") else row[f"prompt_{c}_seconds"])
                 for c in ("cpu", "wall")}
        row["decode_tokens_per_wall_second"] = NEW / extra["wall"]
        row["decode_tokens_per_cpu_second"] = NEW / extra["cpu"]
        row["tokens"] = runs[-1]["tokens"]
        if "bytes" in runs[-1]:
            row["megabytes"] = runs[-1]["bytes"] / 1e6
        report[name] = row
    reference = report.get("keras", {}).get("tokens")
    for row in report.values():
        row["same_tokens_as_keras"] = sum(a == b for a, b in zip(row["tokens"], reference or []))
    return report


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    from keras_adapters.backbones import llama
    from keras_adapters.io import presets

    folder = presets.resolve_preset(args.gguf)
    ids = json.dumps(stable_prompts(llama.tokenizer(folder), rows=1)[0])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    variants = {"tflite": sys.executable, "tflite-int8": sys.executable, "keras": sys.executable,
                "torch": args.torch_python}
    results = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, python in variants.items():
            results[name].append(run_worker(name, [python, HERE, "--worker", name, folder, str(args.steps), ids], env))
            print(f"round {round_} {name}: done", flush=True)
    report = {"machine": machine_description(), "prompt_tokens": PROMPT, "new_tokens": NEW,
              "tflite_sequence_length": LENGTH, "rounds": args.rounds, "variants": summarize(results)}
    print(json.dumps(report["variants"], indent=1))
    with open(os.path.join(os.path.dirname(HERE), "results", "decoder_tflite.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
