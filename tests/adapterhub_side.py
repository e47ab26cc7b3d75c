"""The AdapterHub side of the interop tests, run by another interpreter
(AdapterHub `adapters` 1.3 needs transformers 4.57, this package 5).

    python adapterhub_side.py PRESET CONFIG_JSON HEAD_JSON OUT_DIR

Trains an adapter with a classification head a few steps on MiniLM, saves it
(`OUT_DIR/adapter`) and writes its class probabilities on TEST
(`OUT_DIR/probabilities.json`). CONFIG_JSON: {"config": "seq_bn", ...overrides}.
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


def main(preset, config, head, out):
    import torch
    from adapters import AdapterConfig
    from adapters import AutoAdapterModel
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    config = json.loads(config)
    name = config.pop("name", "hub")
    tokenizer = AutoTokenizer.from_pretrained(preset)
    model = AutoAdapterModel.from_pretrained(preset)
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


if __name__ == "__main__":
    main(*sys.argv[1:])
