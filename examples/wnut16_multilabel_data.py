"""A multi-label text corpus from human annotations: the WNUT-16 tweets, each
labelled with the set of entity types it mentions (10 types; none is allowed).

Built from the same seeded 80/20 split by tweet as the tagging data
(`wnut16_data.wnut16_split`), so no test tweet is ever a training tweet of
either task. Writes `data/cache/wnut16/{train,test}.multilabel.jsonl`
(`{"text": ..., "labels": [...]}` per tweet); nothing is committed.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wnut16_data import wnut16_split  # noqa: E402


def _tweets(conll_path):
    tweets, words, types = [], [], set()
    for line in Path(conll_path).read_text(encoding="utf-8").split("\n") + [""]:
        if line.strip():
            word, tag = line.rsplit("\t", 1) if "\t" in line else line.rsplit(" ", 1)
            words.append(word)
            if tag != "O":
                types.add(tag.split("-", 1)[1])
        elif words:
            tweets.append({"text": " ".join(words), "labels": sorted(types)})
            words, types = [], set()
    return tweets


def wnut16_multilabel_split():
    """Write (once) and return {"train": path, "test": path} of JSONL files."""
    conll = wnut16_split()
    out = {}
    for name, path in conll.items():
        target = Path(path).with_suffix(".multilabel.jsonl")
        if not target.is_file():
            tmp = target.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(t) + "\n" for t in _tweets(path)), encoding="utf-8")
            tmp.replace(target)
        out[name] = str(target)
    return out


if __name__ == "__main__":
    paths = wnut16_multilabel_split()
    for name, path in paths.items():
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        counts = {}
        for row in rows:
            for label in row["labels"]:
                counts[label] = counts.get(label, 0) + 1
        print(name, path, len(rows), "tweets,", sum(1 for r in rows if r["labels"]), "with entities", counts)
