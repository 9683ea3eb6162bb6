"""Reading a dataset (files and folders) into Conversations, with every problem located.

`read_dataset` returns conversations and problems together (for `tunery data check`);
`load_dataset` is what training calls: it raises `DataError` listing the problems when any is an error.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunery.data.formats import FORMAT_KEYS, FormatState, convert_record, detect_format, report_ignored_keys
from tunery.data.problems import Problem, ProblemLog, summarise_problems, with_severity
from tunery.data.readers import FileStats, list_dataset_files, read_file
from tunery.errors import DataError
from tunery.safeio import cap, cap_hint
from tunery.types import Conversation, Location

MIN_EXAMPLES = 10


@dataclass
class FileReport:
    """One file's reading: its type, detected format, and counts."""

    stats: FileStats
    format: str | None = None
    examples: int = 0

    def to_dict(self) -> dict:
        return {"file": self.stats.file, "file_type": self.stats.file_type, "format": self.format,
                "encoding": self.stats.encoding, "lines": self.stats.lines,
                "blank_lines": self.stats.blank_lines, "records": self.stats.records, "examples": self.examples}


@dataclass
class DatasetReport:
    """Everything read from some paths: usable conversations, per-file reports and problems."""

    conversations: list[Conversation] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return with_severity(self.problems, "error")

    @property
    def warnings(self) -> list[Problem]:
        return with_severity(self.problems, "warning")

    @property
    def formats(self) -> list[str]:
        return sorted({f.format for f in self.files if f.format})


def example_key(conv: Conversation) -> str:
    """The normalised form of an example: what it teaches, not where it came from."""
    key: list[Any] = [conv.kind, [_turn_key(t) for t in conv.turns]]
    if conv.rejected:
        key.append([_turn_key(t) for t in conv.rejected])
    if conv.tools:
        key.append(["tools", list(conv.tools), conv.parallel_tool_calls])
    return json.dumps(key, ensure_ascii=False, separators=(",", ":"))


def _turn_key(turn) -> list:
    """A turn as JSON; tool fields only where present, so keys of plain chat data stay as they were."""
    key = [turn.role, turn.content, turn.train]
    if turn.tool_calls or turn.tool_call_id is not None:
        key.append([list(turn.tool_calls), turn.tool_call_id])
    return key


def read_dataset(paths: str | Path | Iterable[str | Path], *, min_examples: int = MIN_EXAMPLES) -> DatasetReport:
    """Read every file under `paths`; never raises on bad content (problems are in the report)."""
    path_list = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    log = ProblemLog()
    report = DatasetReport()
    for path in path_list:
        for file_path in list_dataset_files(path, log):
            report.files.append(_read_one_file(file_path, report.conversations, log))
    _check_duplicates(report.conversations, log)
    usable = len(report.conversations)
    if usable < min_examples and not any(p.code == "file_not_found" for p in log.errors):
        log.error("too_few_examples", f"{usable} usable example{'s' if usable != 1 else ''}; "
                  f"at least {min_examples} are needed")
    order = {f.stats.file: i for i, f in enumerate(report.files)}
    report.problems = sorted(log.problems, key=lambda p: (order.get(p.file, -1 if p.file else len(order)), p.line))
    return report


def load_dataset(paths: str | Path | Iterable[str | Path], *, min_examples: int = MIN_EXAMPLES) -> list[Conversation]:
    """The conversations under `paths`, or DataError listing every problem when any is an error."""
    report = read_dataset(paths, min_examples=min_examples)
    if report.errors:
        count = len(report.errors)
        raise DataError(
            f"dataset has {count} error{'s' if count != 1 else ''}:\n{summarise_problems(report.errors)}",
            code=report.errors[0].code if count == 1 else "invalid_dataset",
            hint="run `tunery data check` on the files for the full report",
            problems=report.problems,
        )
    return report.conversations


def example_chars(conv: Conversation) -> int:
    return sum(len(t.content) for t in conv.turns) + sum(len(t.content) for t in conv.rejected or ())


def _read_one_file(path: Path, out: list[Conversation], log: ProblemLog) -> FileReport:
    records, stats = read_file(path, log)
    report = FileReport(stats)
    if stats.blank_lines:
        log.warning("blank_lines", f"{stats.blank_lines} blank line{'s' if stats.blank_lines != 1 else ''} skipped",
                    file=stats.file)
    if stats.columns is not None and not _columns_name_a_format(stats, log):
        return report
    state = FormatState()
    example_cap = cap("example")
    for record in records:
        conv = convert_record(record, state, log)
        if conv is not None and example_chars(conv) > example_cap:  # tokenizing it would take gigabytes
            log.error("example_too_long", f"example holds {example_chars(conv):,} characters, over the "
                      f"{example_cap:,} cap", file=record.file, line=record.line, hint=cap_hint("example", example_cap))
        elif conv is not None:
            out.append(conv)
            report.examples += 1
    report_ignored_keys(stats.file, state, log)
    report.format = "text" if stats.file_type == "document" else state.file_format
    return report


def _columns_name_a_format(stats: FileStats, log: ProblemLog) -> bool:
    """A table (CSV, Parquet) must name one format's columns in its header; checked once, not per row."""
    fmt, code, message = detect_format(set(stats.columns or []))
    if fmt is None:
        log.error("missing_columns", f"header does not name a format's columns: {message}",
                  file=stats.file, line=1)
        return False
    missing = sorted(FORMAT_KEYS[fmt][0] - set(stats.columns or []))
    if missing:
        log.error("missing_columns", f"missing column{'s' if len(missing) > 1 else ''} "
                  f"{', '.join(missing)} of the {fmt} format", file=stats.file, line=1)
        return False
    return True


def _check_duplicates(conversations: Sequence[Conversation], log: ProblemLog) -> None:
    first_seen: dict[str, Location | None] = {}
    for conv in conversations:
        key = example_key(conv)
        if key not in first_seen:
            first_seen[key] = conv.location
            continue
        first, here = first_seen[key], conv.location
        where = {"file": here.file, "line": here.line} if here else {}
        if first and here and first.file == here.file:
            log.warning("duplicate_example", f"same example as line {first.line}", **where)
        else:
            log.warning("cross_file_duplicate", f"same example as {first}", **where)


def find_shared_examples(a: Sequence[Conversation], b: Sequence[Conversation]) -> list[tuple[Location | None, Location | None]]:
    """Pairs (location in a, location in b) of examples present in both (e.g. train and validation)."""
    in_a: dict[str, Location | None] = {}
    for conv in a:
        in_a.setdefault(example_key(conv), conv.location)
    return [(in_a[k], conv.location) for conv in b if (k := example_key(conv)) in in_a]
