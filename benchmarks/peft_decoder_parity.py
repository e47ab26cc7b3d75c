"""Adapters of a decoder trained with PyTorch + peft compute the same here.

A tiny random decoder of each family — Llama (the tests' `tiny_llama_folder`:
random RMS-norm scales, grouped-query attention), GPT-2 (`tiny_gpt2_folder`:
random layer norms and biases, the fused `c_attn` projection, learned
positions) or Gemma 3 (`tiny_gemma3_folder`: scaled token vectors, query/key
norms, sliding-window layers shorter than the rows, heads wider than
hidden / heads) — is trained 6 AdamW steps in PyTorch with peft (LoRA on
all-linear with rsLoRA, DoRA, (IA)^3 at peft's defaults, prompt tuning),
saved with `save_pretrained`; `AdapterCausalLM.from_adapter` loads each
folder and its logits are compared with PyTorch's on the same ids. The other
way, our adapters (random weights; LoRA on GPT-2's query and value only, a
part of its fused `c_attn`; per-unit ranks; DoRA; (IA)^3; prompt; prefix) are
written with `convert --to peft` and run by `PeftModel.from_pretrained`.

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
DORA_MODULES = {"llama": ["q_proj", "v_proj", "down_proj"], "gpt2": ["c_attn", "mlp.c_proj"],
                "gemma3": ["q_proj", "v_proj", "down_proj"]}


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


def torch_load(base, folder):
    """PyTorch + peft's logits for our adapter written as a peft folder."""
    import numpy as np
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(model, folder).eval()
    with torch.no_grad():
        np.save(os.path.join(folder, "logits.npy"), model(input_ids=torch.tensor(IDS)).logits[:, -len(IDS[0]):].numpy())


#: Our adapters written for peft (`keras-adapters convert --to peft`): name -> method config per family.
BACK = {
    # Query and value only: two thirds of GPT-2's c_attn.
    "lora_qv": lambda family: {"method": "lora", "rank": 4, "alpha": 8, "target_modules": ["query", "value"]},
    "lora_all_rs": lambda family: {"method": "lora", "rank": 4, "alpha": 8, "use_rslora": True,
                                   "rank_pattern": {"value": 2}, "target_modules": ALL_LINEAR[family]},
    "dora": lambda family: {"method": "lora", "rank": 2, "alpha": 4, "use_dora": True,
                            "target_modules": ["query", "key", "value", "feedforward_output_dense"]},
    "ia3": lambda family: {"method": "ia3"},
    "prompt": lambda family: {"method": "prompt", "num_virtual_tokens": 4, "init": "random"},
    "prefix": lambda family: {"method": "prefix", "prefix_length": 3, "reparameterize": False},
}
ALL_LINEAR = {"llama": ["query", "key", "value", "attention_output", "feedforward_gate_dense",
                        "feedforward_intermediate_dense", "feedforward_output_dense"],
              "gpt2": ["query", "key", "value", "attention_output", "feedforward_intermediate_dense",
                       "feedforward_output_dense"]}
ALL_LINEAR["gemma3"] = ALL_LINEAR["llama"]


def back_rows(args, base, work, inputs, plain):
    """Our adapters, random weights, written as peft folders and run by PyTorch + peft."""
    import numpy as np

    from keras_adapters.core import injection
    from keras_adapters.models.causal_lm import AdapterCausalLM
    from keras_adapters.runs import conversion

    rows = {}
    for kind, method in BACK.items():
        model = AdapterCausalLM.from_preset(base, method=method(args.family))
        rng = np.random.default_rng(0)
        for w in injection.adapter_weights_by_key(model.backbone, "default").values():
            w.assign((rng.normal(0, 0.3, w.shape) + (1.0 if w.path.endswith(("scale", "magnitude")) else 0.0))
                     .astype("float32"))
        model.save_adapter(work / f"ours_{kind}")
        conversion.to_peft(work / f"ours_{kind}", work / f"peft_{kind}")
        subprocess.run([args.torch_python, HERE, "--torch-load", base, str(work / f"peft_{kind}")], check=True,
                       env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        expected = np.load(work / f"peft_{kind}" / "logits.npy")
        ours = np.asarray(model(inputs))
        rows[kind] = {"max_abs_difference": float(np.abs(ours - expected).max()),
                      "adapter_effect": float(np.abs(plain - ours).max()), "largest_logit": float(np.abs(ours).max())}
        print("back", kind, json.dumps(rows[kind]), flush=True)
    return rows


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-side":
        return torch_side(*sys.argv[2:6])
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-load":
        return torch_load(*sys.argv[2:4])
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch-python", required=True)
    parser.add_argument("--family", choices=["llama", "gpt2", "gemma3"], default="llama")
    args = parser.parse_args()
    import numpy as np

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests"))
    from tiny_gemma3 import tiny_gemma3_folder
    from tiny_gpt2 import tiny_gpt2_folder
    from tiny_llama import tiny_llama_folder

    from common import machine_description
    from keras_adapters.models.causal_lm import AdapterCausalLM

    work = Path(tempfile.mkdtemp())
    folders = {"llama": tiny_llama_folder, "gpt2": tiny_gpt2_folder, "gemma3": tiny_gemma3_folder}
    base = str(folders[args.family](work / "base"))
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
    report = {"machine": machine_description(), "family": args.family, "rows": rows,
              "ours_to_peft": back_rows(args, base, work, inputs, plain)}
    with open(os.path.join(os.path.dirname(HERE), "results", f"peft_{args.family}_parity.json"), "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
