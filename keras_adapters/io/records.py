"""Records of JSON-lines, CSV and TSV files, for the tasks' file readers.

- `.jsonl` / `.ndjson`: one JSON object per line (blank lines skipped);
- `.csv`: a header row, then comma-separated rows (quoted as Python's `csv`
  and spreadsheets write them);
- `.tsv`: a header row, then tab-separated rows with no quoting (as GLUE
  ships MNLI, whose texts hold unbalanced quotes).

A line that is not JSON or a row with too many or too few fields is a
`DatasetError` naming the file and line.
"""

import csv
import json

from keras_adapters.io.text_data import DatasetError

#: The suffixes these files have.
SUFFIXES = (".jsonl", ".ndjson", ".csv", ".tsv")


def read_records(path, example):
    """(line number, {column: value}) per record of a JSONL, CSV or TSV file;
    `example`: a JSON line the error messages show."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DatasetError(
            f"{path}: this data is read from {', '.join(SUFFIXES)} files, not {suffix or 'no suffix'!r}."
        )
    # utf-8-sig: a spreadsheet's byte-order mark is not part of the first column's name.
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        if suffix in (".jsonl", ".ndjson"):
            yield from _json_records(path, f, example)
        else:
            yield from _table_records(path, f, "\t" if suffix == ".tsv" else ",")


def _json_records(path, lines, example):
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(
                f"{path}:{number}: not a JSON object ({e.msg}); each line holds one object such as {example}."
            ) from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{number}: a JSON {type(record).__name__}, not an object.")
        yield number, record


#: Python's csv module refuses fields over 128 KB by default; a text that
#: long is cut in the graph anyway (`data.clean_text`).
MAX_FIELD_BYTES = 64 * 1024 * 1024


def _table_records(path, f, delimiter):
    csv.field_size_limit(MAX_FIELD_BYTES)
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
    try:
        yield from _table_rows(path, reader, delimiter)
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DatasetError(f"{path}:{reader.line_num}: not readable as {kind} ({e}).") from None


def _table_rows(path, reader, delimiter):
    header = next(reader, None)
    if not header:
        raise DatasetError(f"{path} is empty; it needs a header row naming its columns.")
    header = [c.strip() for c in header]
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DatasetError(
                f"{path}:{reader.line_num}: {len(row)} field(s), but the header names {len(header)} "
                f"({header}). Quote fields that hold the separator"
                + (" (CSV), or use a .tsv file." if delimiter == "," else "; TSV fields hold no tabs.")
            )
        yield reader.line_num, dict(zip(header, row))


def field(path, number, record, key, option):
    """`record[key]` as a string; a clear error when it is missing or null."""
    if key not in record:
        raise DatasetError(
            f"{path}:{number}: no {key!r} field (the record has {sorted(record)}). Name the column "
            f"with {option}= (CLI --{option.replace('_', '-')})."
        )
    value = record[key]
    if value is None:
        raise DatasetError(f"{path}:{number}: the {key!r} field is null; give it a value or drop the record.")
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


