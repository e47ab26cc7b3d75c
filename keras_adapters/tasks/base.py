"""The tasks an adapter's head can do, and telling a data source's task.

Python and adapter folders spell a task with underscores
(`"pair_classification"`); the CLI's `--task` takes the same words with
hyphens (`pair-classification`), as the Hugging Face pipelines name them.
"""

import csv
import json
import re
from pathlib import Path

TEXT_CLASSIFICATION = "text_classification"
PAIR_CLASSIFICATION = "pair_classification"
TOKEN_CLASSIFICATION = "token_classification"
QUESTION_ANSWERING = "question_answering"
#: Tasks a `ClassificationHead` does (one label per text, or per pair).
CLASSIFICATION_TASKS = (TEXT_CLASSIFICATION, PAIR_CLASSIFICATION)
#: Tasks this release has heads for.
HEAD_TASKS = (*CLASSIFICATION_TASKS, TOKEN_CLASSIFICATION, QUESTION_ANSWERING)
TASKS = HEAD_TASKS
#: File suffixes of pair data (JSON lines, comma- and tab-separated values).
PAIR_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")

FORMATS = (
    "a folder with one sub-folder per class of .txt files (text-classification); "
    "tfds:NAME (text-classification); a .jsonl, .csv or .tsv file with two text columns "
    "(pair-classification); a CoNLL-style file of 'word<TAB>tag' lines, sentences separated by "
    "blank lines (token-classification); SQuAD v1.1 JSON (question-answering)"
)
#: A CoNLL line: a word, white space, and a BIO/IOBES tag last.
CONLL_LINE = re.compile(r"^\S.*\s(O|[BIES]-\S+)$")


def canonical_task(task):
    """`task` in Python spelling; `ValueError` naming the tasks for anything else."""
    name = str(task).replace("-", "_")
    if name not in TASKS:
        raise ValueError(f"Unknown task {task!r}; the tasks are {', '.join(cli_name(t) for t in TASKS)}.")
    return name


def cli_name(task):
    return task.replace("_", "-")


def detect_task(source, text_b_key="text_b"):
    """The task a data source is for, from its layout.

    A folder (or `tfds:NAME`): text classification. A file whose first
    lines are `word<TAB>tag` (a BIO/IOBES tag): token classification. A
    `.jsonl`, `.csv` or `.tsv` file whose first record has a `text_b_key`
    field: pairs.

    Raises:
        ValueError: the source is none of these; the message names the formats.
    """
    source = str(source)
    if source.startswith("tfds:") or Path(source).is_dir():
        return TEXT_CLASSIFICATION
    path = Path(source)
    if not path.exists():
        raise ValueError(f"{source!r} does not exist. Pass {FORMATS}.")
    if _looks_like_conll(path):
        return TOKEN_CLASSIFICATION
    if path.suffix.lower() == ".json" and _looks_like_squad(path):
        return QUESTION_ANSWERING
    if path.suffix.lower() in PAIR_SUFFIXES:
        fields = _first_record_fields(path)
        if text_b_key in fields:
            return PAIR_CLASSIFICATION
        raise ValueError(
            f"{source} has no {text_b_key!r} column (its columns: {sorted(fields)}), so its task cannot be "
            f"told. For sentence pairs name the second text's column (--text-b-key), or pass --task. "
            f"Formats: {FORMATS}."
        )
    raise ValueError(f"Cannot tell the task of {source!r} from its format. Pass {FORMATS}; or pass --task.")


def _first_record_fields(path):
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            if path.suffix.lower() in (".jsonl", ".ndjson"):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    return []
                return list(record) if isinstance(record, dict) else []
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            return [c.strip() for c in next(csv.reader([line], delimiter=delimiter))]
    return []


def _looks_like_conll(path, lines=20):
    """Its first `lines` non-blank lines (past `-DOCSTART-`) all end in a tag.

    Raises:
        ValueError: the file starts as a CoNLL file, then a line among the
            first `lines` is not one: that line is named (file:line).
    """
    seen = 0
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("-DOCSTART-"):
                continue
            if not CONLL_LINE.match(line):
                if seen:
                    raise ValueError(
                        f"{path}:{number}: {line[:60]!r} is not 'word<TAB>tag' (a BIO/IOBES tag last), "
                        f"though the {seen} line(s) before it are: fix that line (sentences are separated "
                        "by blank lines)."
                    )
                return False
            seen += 1
            if seen == lines:
                break
    return seen > 0


def _looks_like_squad(path):
    """A SQuAD-format JSON: {"data": [{"paragraphs": [...]}, ...]}."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        head = f.read(4096)
    return '"data"' in head and '"paragraphs"' in head
