"""File readers: JSONL, JSON arrays, CSV, Parquet, text documents and folders of them, to raw records.

A raw record is whatever one example's source holds (normally a dict) with its file and 1-based line;
readers report located problems and never raise on bad content. They do not know the formats' keys.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunery.data.decoding import DecodedText, decode_bytes
from tunery.data.jsonparse import DECODER, JsonProblem, check_depth, describe_decode_error, parse_json
from tunery.data.problems import ProblemLog
from tunery.safeio import cap, cap_hint, first_long_line

DATA_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
                 ".parquet": "parquet", ".pq": "parquet"}
DOCUMENT_SUFFIXES = {".txt", ".md", ".markdown"}
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip_whitespace(text: str, pos: int) -> int:
    """The first position at or after `pos` that is not JSON whitespace."""
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos  # the pattern matches the empty string, so always


@dataclass
class RawRecord:
    """One example's source value before format checks."""

    value: Any
    file: str
    line: int


@dataclass
class FileStats:
    """What reading one file found (shown in the check report)."""

    file: str
    file_type: str
    encoding: str = ""
    lines: int = 0
    blank_lines: int = 0
    records: int = 0
    columns: list[str] | None = None  # CSV and Parquet: the header


def list_dataset_files(path: Path, log: ProblemLog) -> list[Path]:
    """The dataset files a path names: itself, or the supported files under a folder, sorted."""
    if not path.exists():
        log.error("file_not_found", f"{path} does not exist", file=str(path))
        return []
    if path.is_file():
        if _file_type(path) is None:
            log.error("unsupported_file", f"unsupported file type {path.suffix or '(none)'!r}", file=str(path))
            return []
        return [path]
    found = []
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in child.relative_to(path).parts):
            continue
        if _file_type(child) is None:
            log.warning("unsupported_file", f"skipped: unsupported file type {child.suffix or '(none)'!r}",
                        file=str(child))
            continue
        found.append(child)
    if not found:
        log.error("empty_file", "folder holds no dataset files", file=str(path))
    return found


def _file_type(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in DOCUMENT_SUFFIXES:
        return "document"
    return DATA_SUFFIXES.get(suffix)


def read_file(path: Path, log: ProblemLog) -> tuple[list[RawRecord], FileStats]:
    """Read one file into raw records; problems go to `log`."""
    file = str(path)
    file_type = _file_type(path) or "unknown"
    stats = FileStats(file, file_type)
    if file_type == "parquet":
        records = _read_parquet(path, log, stats)
        stats.records = len(records)
        return records, stats
    try:
        if not within_caps(path, file_type, log):
            return [], stats
        raw = path.read_bytes()
    except OSError as exc:
        log.error("file_not_found", f"cannot read file: {exc.strerror or exc}", file=file)
        return [], stats
    if file_type == "document" and not raw.strip():
        log.warning("empty_file", "document is empty; skipped", file=file, hint="")
        return [], stats
    decoded = decode_bytes(raw, file, log)
    if decoded is None:
        return [], stats
    stats.encoding = decoded.encoding
    stats.lines = decoded.text.count("\n") + (0 if decoded.text.endswith("\n") else 1)
    if file_type == "document":
        records = [] if decoded.bad_lines else [RawRecord({"text": decoded.text}, file, 1)]
    elif file_type == "csv":
        records = _read_csv(decoded, file, stats, log)
    elif file_type == "json" and decoded.text.lstrip().startswith("["):
        records = _read_json_array(decoded, file, log)
    elif file_type == "json" and _is_one_multiline_object(decoded.text):
        log.error("json_not_array", "the .json file holds one object, not an array of examples", file=file, line=1)
        records = []
    else:  # .jsonl, or a .json file holding one object per line
        records = _read_jsonl(decoded, file, stats, log)
    stats.records = len(records)
    return records, stats


def within_caps(path: Path, file_type: str, log: ProblemLog) -> bool:
    """Refuse, before reading it whole, a file over the file cap or (but a JSON array) with a line over the line cap."""
    file = str(path)
    size, file_cap = path.stat().st_size, cap("file")
    if size > file_cap:
        log.error("file_too_large", f"file is {size:,} bytes, over the {file_cap:,}-byte cap", file=file,
                  hint="split it into several files; " + cap_hint("file", file_cap))
        return False
    if file_type == "json":  # a JSON array may be one long line; the file cap bounds it
        return True
    line_cap = cap("line")
    long_line = first_long_line(path, line_cap)
    if long_line is not None:
        log.error("line_too_long", f"line longer than the {line_cap:,}-byte cap", file=file, line=long_line,
                  hint="one example per line (a missing newline?); " + cap_hint("line", line_cap))
        return False
    return True


def _is_one_multiline_object(text: str) -> bool:
    if "\n" not in text.strip():
        return False
    try:
        return isinstance(parse_json(text), dict)
    except JsonProblem:
        return False


def _read_jsonl(decoded: DecodedText, file: str, stats: FileStats, log: ProblemLog) -> list[RawRecord]:
    records = []
    for number, line in enumerate(decoded.lines(), start=1):
        if number in decoded.bad_lines:
            continue
        if not line.strip():
            stats.blank_lines += 1
            continue
        try:
            records.append(RawRecord(parse_json(line), file, number))
        except JsonProblem as problem:
            log.error(problem.code, problem.message, file=file, line=number)
    return records


def _read_json_array(decoded: DecodedText, file: str, log: ProblemLog) -> list[RawRecord]:
    """Decode `[...]` element by element so each example keeps the line it starts on."""
    text = decoded.text
    if decoded.bad_lines:
        return []  # the invalid bytes are reported; the structure around them cannot be trusted
    newlines = [m.start() for m in re.finditer("\n", text)]

    def line_at(pos: int) -> int:
        return bisect.bisect_right(newlines, pos - 1) + 1

    try:
        check_depth(text, max_depth=65)  # the array itself is one level
    except JsonProblem as problem:
        log.error(problem.code, problem.message, file=file)
        return []
    records: list[RawRecord] = []
    pos = _skip_whitespace(text, 0) + 1  # past "["
    pos = _skip_whitespace(text, pos)
    if text.startswith("]", pos):
        pos = _skip_whitespace(text, pos + 1)
        if pos < len(text):
            log.error("invalid_json", "text after the closing ']'", file=file, line=line_at(pos))
        return records
    while True:
        try:
            value, end = DECODER.raw_decode(text, pos)
        except JsonProblem as problem:
            log.error(problem.code, problem.message, file=file, line=line_at(pos))
            return records
        except ValueError as exc:  # JSONDecodeError and digit-limit errors
            message = describe_decode_error(exc) if isinstance(exc, json.JSONDecodeError) else str(exc)
            where = getattr(exc, "pos", pos)
            log.error("invalid_json", message, file=file, line=line_at(where))
            return records
        except RecursionError:
            log.error("too_deep", "JSON nested too deeply", file=file, line=line_at(pos))
            return records
        records.append(RawRecord(value, file, line_at(pos)))
        pos = _skip_whitespace(text, end)
        if text.startswith(",", pos):
            pos = _skip_whitespace(text, pos + 1)
            continue
        if text.startswith("]", pos):
            rest = _skip_whitespace(text, pos + 1)
            if rest < len(text):
                log.error("invalid_json", "text after the closing ']'", file=file, line=line_at(rest))
            return records
        found = "the end of the file (truncated?)" if pos >= len(text) else repr(text[pos])
        log.error("invalid_json", f"expected ',' or ']' after an element, found {found}",
                  file=file, line=line_at(min(pos, len(text) - 1)))
        return records


def _read_csv(decoded: DecodedText, file: str, stats: FileStats, log: ProblemLog) -> list[RawRecord]:
    csv.field_size_limit(1 << 30)  # the default (128 KiB per field) rejects long documents
    reader = csv.reader(io.StringIO(decoded.text, newline=""), strict=True)
    records: list[RawRecord] = []
    header: list[str] | None = None
    end_line = 0
    while True:
        start_line = end_line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            log.error("csv_invalid", f"CSV cannot be parsed: {exc}", file=file, line=reader.line_num)
            break
        end_line = reader.line_num
        if any(n in decoded.bad_lines for n in range(start_line, end_line + 1)):
            continue
        if not row or all(not cell.strip() for cell in row):
            stats.blank_lines += 1
            continue
        if header is None:
            header = [name.strip().lstrip("\ufeff") for name in row]
            stats.columns = header
            continue
        if len(row) != len(header):
            log.error("csv_ragged_row", f"row has {len(row)} fields but the header has {len(header)}",
                      file=file, line=start_line)
            continue
        records.append(RawRecord(_csv_row_value(dict(zip(header, row, strict=True)), file, start_line, log),
                                 file, start_line))
    if header is None:
        log.error("empty_file", "CSV file has no header row", file=file)
    return [r for r in records if r.value is not None]


def _csv_row_value(row: dict[str, str], file: str, line: int, log: ProblemLog) -> dict | None:
    """A CSV row as a record; a `messages` column holds the conversation as JSON text."""
    if "messages" in row:
        try:
            row["messages"] = parse_json(row["messages"])
        except JsonProblem as problem:
            log.error(problem.code, problem.message, file=file, line=line, field="messages")
            return None
    return row


def _read_parquet(path: Path, log: ProblemLog, stats: FileStats) -> list[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        stats.columns = list(table.column_names)
        rows = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        log.error("parquet_invalid", f"cannot read Parquet: {exc}", file=str(path))
        return []
    if not rows:
        log.error("empty_file", "Parquet file has no rows", file=str(path))
    return [RawRecord(_drop_null_optionals(row), str(path), index) for index, row in enumerate(rows, start=1)]


def _drop_null_optionals(row: dict) -> dict:
    """Parquet structs give every message every field: a null `weight` there means "not given"."""
    messages = row.get("messages")
    if isinstance(messages, list):
        row["messages"] = [{k: v for k, v in m.items() if not (k == "weight" and v is None)}
                           if isinstance(m, dict) else m for m in messages]
    return row
