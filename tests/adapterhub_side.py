"""The AdapterHub side of the interop tests, run by another interpreter
(AdapterHub `adapters` 1.3 needs transformers 4.57, this package 5).

    python adapterhub_side.py PRESET CONFIG_JSON HEAD_JSON OUT_DIR
    python adapterhub_side.py --load PRESET ADAPTER_DIR OUT_JSON

Trains an adapter with a classification head a few steps on MiniLM, saves it
(`OUT_DIR/adapter`) and writes its class probabilities on TEST
(`OUT_DIR/probabilities.json`). CONFIG_JSON: {"config": "seq_bn", ...overrides}.
With --load: loads an AdapterHub folder (as written by `convert --to
adapterhub`) with AdapterHub's defaults and writes its probabilities on TEST.
"""

import json
import sys

TRAIN = [
    ("Shares fell sharply after the bank cut its profit forecast.", 0),
    ("The central bank raised interest rates again.", 0),
    ("The striker scored twice in the cup final.", 1),
    ("The home side won the league on the last day.", 1),
    ("A new phone chip promises longer battery life.", 2),
    ("The software update fixes a security flaw.", 2),
]
TEST = ["Markets rallied as inflation eased.", "The coach was sacked after a heavy defeat.", "A faster laptop went on sale."]


def _attention(kind):
    """Eager attention for prompt tuning: with transformers' default (SDPA) AdapterHub 1.3 prefixes
    the attention mask in a form SDPA reads differently, and a padded row's outputs then differ
    from the same text alone (by up to 0.08 in our tests); eager attention is padding-independent."""
    return "eager" if kind == "prompt_tuning" else "sdpa"


def main(preset, config, head, out):
    import torch
    from adapters import AdapterConfig
    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    config = json.loads(config)
    name = config.pop("name", "hub")
    tokenizer = AutoTokenizer.from_pretrained(preset)
    model = AutoAdapterModel.from_pretrained(preset, attn_implementation=_attention(config.get("config")))
    model.add_adapter(name, config=AdapterConfig.load(config.pop("config"), **config))
    model.add_classification_head(name, num_labels=3, **json.loads(head))
    model.train_adapter(name)
    batch = tokenizer([t for t, _ in TRAIN], padding=True, return_tensors="pt")
    labels = torch.tensor([y for _, y in TRAIN])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(8):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    model.save_adapter(f"{out}/adapter", name, with_head=True)
    with torch.no_grad():
        logits = model(**tokenizer(TEST, padding=True, return_tensors="pt")).logits
    with open(f"{out}/probabilities.json", "w") as f:
        json.dump(torch.softmax(logits, -1).tolist(), f)


def load(preset, adapter, out):
    import torch
    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(preset)
    with open(f"{adapter}/adapter_config.json") as f:
        architecture = json.load(f)["config"].get("architecture")
    model = AutoAdapterModel.from_pretrained(preset, attn_implementation=_attention(architecture))
    name = model.load_adapter(adapter)  # AdapterHub's defaults: pytorch_adapter.bin, the head with it
    model.set_active_adapters(name)
    model.eval()
    with torch.no_grad():
        logits = model(**tokenizer(TEST, padding=True, return_tensors="pt")).logits
    with open(out, "w") as f:
        json.dump({"name": name, "probabilities": torch.softmax(logits, -1).tolist()}, f)


if __name__ == "__main__":
    load(*sys.argv[2:]) if sys.argv[1] == "--load" else main(*sys.argv[1:])
