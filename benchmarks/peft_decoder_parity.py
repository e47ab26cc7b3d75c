"""Adapters of a decoder trained with PyTorch + peft compute the same here.

A tiny random decoder of each family — Llama (the tests' `tiny_llama_folder`:
random RMS-norm scales, grouped-query attention) or GPT-2 (`tiny_gpt2_folder`:
random layer norms and biases, the fused `c_attn` projection, learned
positions) — is trained 6 AdamW steps in PyTorch with peft (LoRA on
all-linear with rsLoRA, DoRA, (IA)^3 at peft's defaults, prompt tuning),
saved with `save_pretrained`; `AdapterCausalLM.from_adapter` loads each
folder and its logits are compared with PyTorch's on the same ids.

    .venv/bin/python benchmarks/peft_decoder_parity.py --torch-python PTENV/bin/python --family gpt2

Writes benchmarks/results/peft_<family>_parity.json.
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
KINDS = ("lora", "dora", "ia3", "prompt", "prefix", "prefix_mlp")
#: DoRA's modules per family (Hugging Face names).
DORA_MODULES = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "mlp.c_proj"]}


def torch_side(base, out, kind, family):
    import numpy as np
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    config = {
        "lora": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_rslora=True, task_type="CAUSAL_LM"),
        "dora": lambda: peft.LoraConfig(r=2, lora_alpha=4, target_modules=DORA_MODULES[family], use_dora=True,
                                        task_type="CAUSAL_LM"),
        "ia3": lambda: peft.IA3Config(task_type="CAUSAL_LM"),
        "prompt": lambda: peft.PromptTuningConfig(num_virtual_tokens=5, task_type="CAUSAL_LM"),
        "prefix": lambda: peft.PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
        "prefix_mlp": lambda: peft.PrefixTuningConfig(num_virtual_tokens=3, prefix_projection=True,
                                                      encoder_hidden_size=8, task_type="CAUSAL_LM"),
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
        return torch_side(*sys.argv[2:6])
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--family", choices=["llama", "gpt2"], default="llama")
    args = parser.parse_args()
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))
    from tiny_gpt2 import tiny_gpt2_folder
    from tiny_llama import tiny_llama_folder

    from common import machine_description
    from keras_adapters.models.causal_lm import AdapterCausalLM

    work = Path(tempfile.mkdtemp())
    base = str({"llama": tiny_llama_folder, "gpt2": tiny_gpt2_folder}[args.family](work / "base"))
    ids = np.array(IDS)
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    plain = np.asarray(AdapterCausalLM.from_preset(base, method=None)(inputs))
    rows = {}
    for kind in KINDS:
        out = str(work / kind)
        subprocess.run([args.torch_python, HERE, "--torch-side", base, out, kind, args.family], check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        expected = np.load(os.path.join(out, "logits.npy"))
        model = AdapterCausalLM.from_adapter(out, preset=base)
        ours = np.asarray(model(inputs))
        rows[kind] = {"method": model.adapter_config().get_config()["method"],
                      "max_abs_difference": float(np.abs(ours - expected).max()),
                      "adapter_effect": float(np.abs(plain - expected).max()),
                      "largest_logit": float(np.abs(expected).max())}
        print(kind, json.dumps(rows[kind]), flush=True)
    report = {"machine": machine_description(), "family": args.family, "rows": rows}
    with open(os.path.join(os.path.dirname(HERE), "results", f"peft_{args.family}_parity.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
