"""Adapters of a Llama causal LM trained with PyTorch + peft compute the same here.

A tiny random Llama (the tests' `tiny_llama_folder`: random RMS-norm scales,
grouped-query attention) is trained 6 AdamW steps in PyTorch with peft (LoRA
on all-linear with rsLoRA, DoRA, (IA)^3 at peft's defaults, prompt tuning),
saved with `save_pretrained`; `AdapterCausalLM.from_adapter` loads each
folder and its logits are compared with PyTorch's on the same ids.

    .venv/bin/python benchmarks/peft_llama_parity.py --torch-python PTENV/bin/python

Writes benchmarks/results/peft_llama_parity.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = os.path.abspath(__file__)
IDS = [[3, 9, 6, 11, 4, 7, 8], [5, 5, 10, 3, 6, 9, 4]]
KINDS = ("lora", "dora", "ia3", "prompt")


def torch_side(base, out, kind):
    import numpy as np
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = {
        "lora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True, task_type="CAUSAL_LM"),
        "dora": lambda: peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=True,
                                        task_type="CAUSAL_LM"),
        "ia3": lambda: peft.IA3Config(task_type="CAUSAL_LM"),
        "prompt": lambda: peft.PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"),
    }[kind]()
    model = peft.get_peft_model(model, config)
    ids = torch.tensor(IDS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(6):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out)
    with torch.no_grad():
        np.save(os.path.join(out, "logits.npy"), model(input_ids=ids).logits[:, -len(IDS[0]):].numpy())


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-side":
        return torch_side(*sys.argv[2:5])
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch-python", required=True)
    args = parser.parse_args()
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))
    from tiny_llama import tiny_llama_folder

    from common import machine_description
    from keras_adapters.models.causal_lm import AdapterCausalLM

    work = Path(tempfile.mkdtemp())
    base = str(tiny_llama_folder(work / "base"))
    ids = np.array(IDS)
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    plain = np.asarray(AdapterCausalLM.from_preset(base, method=None)(inputs))
    rows = {}
    for kind in KINDS:
        out = str(work / kind)
        subprocess.run([args.torch_python, HERE, "--torch-side", base, out, kind], check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        expected = np.load(os.path.join(out, "logits.npy"))
        model = AdapterCausalLM.from_adapter(out, preset=base)
        ours = np.asarray(model(inputs))
        rows[kind] = {"method": model.adapter_config().get_config()["method"],
                      "max_abs_difference": float(np.abs(ours - expected).max()),
                      "adapter_effect": float(np.abs(plain - expected).max()),
                      "largest_logit": float(np.abs(expected).max())}
        print(kind, json.dumps(rows[kind]), flush=True)
    report = {"machine": machine_description(), "rows": rows}
    with open(os.path.join(os.path.dirname(HERE), "results", "peft_llama_parity.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
