"""Real task data from the BIG-bench source archive (`bigbench==1.0.0`).

`scripts/setup.sh` keeps the archive as a file in `data/cache/` (never
installed: installing it pulls in a whole other stack). PyPI stopped serving
it in December 2026: set-up takes a sha256-checked copy from the user cache
(scripts/fetch_sdist.py) where a machine has one. This module reads from the archive and
writes our formats once into `data/cache/<task>/`; nothing here is
committed.

- VitaminC fact verification (Schuster, Fisch & Barzilay, NAACL 2021):
  54,668 Wikipedia evidence / claim pairs, labelled supports, refutes or
  not enough info. Split by Wikipedia page (the evidence's title), so no
  page is in both training and test data.
- SQuAD v1.1 (Rajpurkar, Zhang, Lopyrev & Liang, EMNLP 2016), its dev set
  as BIG-bench's squad_shifts task ships it: 10,570 questions on 48
  Wikipedia articles. Split by article.
"""

import hashlib
import json
import math
import os
import random
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "data" / "cache"
ARCHIVE = CACHE / "bigbench-1.0.0.tar.gz"
MEMBERS = {
    "vitaminc": "bigbench-1.0.0/bigbench/benchmark_tasks/vitaminc_fact_verification/task.json",
    "squad": "bigbench-1.0.0/bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json",
}
VITAMINC_LABELS = {"True": "supports", "False": "refutes", "Neither": "not enough info"}


USER_CACHE = os.environ.get("KERAS_ADAPTERS_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "keras-adapters"
)  # where scripts/fetch_sdist.py looks first
MISSING = (
    f"{ARCHIVE} is missing: PyPI no longer serves bigbench 1.0.0's source archive; put a copy "
    f"(sha256 1bb398a5...c5c2) in {USER_CACHE} and run `bash scripts/setup.sh`."
)


def read_member(key):
    if not ARCHIVE.is_file():
        sys.exit(MISSING)
    with tarfile.open(ARCHIVE) as archive:
        return json.load(archive.extractfile(MEMBERS[key]))


def _page(evidence):
    return evidence.split(": ", 1)[0]


def _in_test(page, test_fraction):
    # A hash, not a shuffle: a page's side never depends on the other pages.
    return int(hashlib.sha256(page.encode()).hexdigest()[:8], 16) / 16**8 < test_fraction


def vitaminc_pairs():
    """[{"text_a": evidence, "text_b": claim, "label": ...}] in the archive's order."""
    pairs = []
    for example in read_member("vitaminc")["examples"]:
        evidence, claim = example["input"].split("\nClaim: ", 1)
        label = max(example["target_scores"], key=example["target_scores"].get)
        pairs.append({"text_a": evidence, "text_b": claim, "label": VITAMINC_LABELS[label]})
    return pairs


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return str(path)


def vitaminc_split(train_sizes=(3000,), test_size=2000, test_fraction=0.1, seed=0):
    """Write (once) and return {"train_<n>": path, "test": path} of JSONL pair files.

    The test file holds `test_size` pairs sampled from the pages held out
    (about `test_fraction` of them); each training file is a seeded sample
    of `n` pairs from the other pages (smaller samples are subsets of larger ones).
    """
    folder = CACHE / "vitaminc"
    paths = {f"train_{n}": folder / f"train_{n}.jsonl" for n in train_sizes}
    paths["test"] = folder / f"test_{test_size}.jsonl"
    if all(p.is_file() for p in paths.values()):
        return {k: str(p) for k, p in paths.items()}
    pairs = vitaminc_pairs()
    test = [p for p in pairs if _in_test(_page(p["text_a"]), test_fraction)]
    train = [p for p in pairs if not _in_test(_page(p["text_a"]), test_fraction)]
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(test)
    if max(train_sizes) > len(train):
        raise ValueError(f"Only {len(train)} training pairs; asked for {max(train_sizes)}.")
    for n in train_sizes:
        write_jsonl(paths[f"train_{n}"], train[:n])
    write_jsonl(paths["test"], test[:test_size])
    return {k: str(p) for k, p in paths.items()}


def _write_squad(path, articles):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": "1.1", "data": articles}, ensure_ascii=False))
    tmp.replace(path)


def _take_questions(articles, count):
    """The first `count` questions of `articles` (the last article cut), as SQuAD articles."""
    taken = []
    for article in articles:
        paragraphs = []
        for paragraph in article["paragraphs"]:
            qas = paragraph["qas"][: max(0, count)]
            count -= len(qas)
            if qas:
                paragraphs.append({"context": paragraph["context"], "qas": qas})
        if paragraphs:
            taken.append({"title": article["title"], "paragraphs": paragraphs})
        if count <= 0:
            break
    return taken


def squad_split(train_size=3000, test_size=600, test_fraction=0.2, seed=0):
    """Write (once) and return {"train": path, "test": path}: SQuAD files of
    `train_size` questions from most articles and `test_size` from the
    others (about `test_fraction` of them, chosen by a hash of the title)."""
    folder = CACHE / "squad"
    paths = {"train": folder / f"train_{train_size}.json", "test": folder / f"test_{test_size}.json"}
    if all(p.is_file() for p in paths.values()):
        return {k: str(p) for k, p in paths.items()}
    articles = read_member("squad")["data"]
    rng = random.Random(seed)
    test = [a for a in articles if _in_test(a["title"], test_fraction)]
    train = [a for a in articles if not _in_test(a["title"], test_fraction)]
    rng.shuffle(train)
    for article in test:  # a sample spread over every held-out paragraph
        for paragraph in article["paragraphs"]:
            rng.shuffle(paragraph["qas"])
    available = sum(len(p["qas"]) for a in test for p in a["paragraphs"])
    per_paragraph = test_size / available
    test_sample = [
        {"title": a["title"], "paragraphs": [
            {"context": p["context"], "qas": p["qas"][: math.ceil(per_paragraph * len(p["qas"]))]}
            for p in a["paragraphs"]]}
        for a in test
    ]
    _write_squad(paths["train"], _take_questions(train, train_size))
    _write_squad(paths["test"], _take_questions(test_sample, test_size))
    return {k: str(p) for k, p in paths.items()}


if __name__ == "__main__":
    print(json.dumps(vitaminc_split((3000, 10000, 30000)), indent=2))
    print(json.dumps(squad_split(), indent=2))
