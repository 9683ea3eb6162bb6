"""Located dataset problems: what is wrong, where (file, line, field), a stable code and a fix hint.

A `ProblemLog` collects every problem of a read so the user sees all of them at once; it knows
nothing about formats or files, only how to record, count and cap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["error", "warning"]

# Stable codes with their default one-line hints. Tests and docs/data.md refer to these names.
HINTS: dict[str, str] = {
    "file_not_found": "check the path; pass a .jsonl, .json, .csv, .parquet file or a folder",
    "unsupported_file": "use .jsonl, .json, .csv, .parquet, or a folder of them (or of .txt/.md documents)",
    "empty_file": "the file has no examples; add at least 10",
    "binary_file": "this is not a text dataset; export it as UTF-8 JSONL",
    "compressed_file": "decompress it first (e.g. `gunzip file.jsonl.gz`)",
    "encoding_utf16": "the file was decoded from UTF-16; save it as UTF-8 to silence this",
    "invalid_encoding": "save the file as UTF-8 (e.g. `iconv -f ENCODING -t UTF-8 in > out`)",
    "invalid_utf8": "this line has bytes that are not UTF-8; re-save the file as UTF-8",
    "invalid_json": "each line must be one complete JSON object; the line may be truncated",
    "json_not_array": "a .json file must hold an array of objects; use .jsonl for one object per line",
    "not_an_object": "each example must be a JSON object like {\"messages\": [...]}",
    "non_finite_number": "NaN and Infinity are not valid JSON; use null or a string",
    "number_too_long": "numbers with hundreds of digits are not plausible data; store them as strings",
    "too_deep": "JSON nested this deeply is not a training example; flatten it",
    "unknown_format": "use one of: messages (chat), instruction/output, prompt/completion, text",
    "ambiguous_format": "an example must use the keys of exactly one format",
    "mixed_formats": "use one format per file; split the file by format",
    "missing_key": "add the missing key",
    "unknown_key": "remove the key or fix its spelling",
    "wrong_type": "fix the value's type",
    "no_messages": "a conversation needs at least a user and an assistant message",
    "unknown_role": "role must be one of: system, user, assistant, tool",
    "null_content": "content must be a string, not null",
    "empty_content": "content must contain text",
    "invalid_unicode": "the text holds a lone surrogate escape (e.g. \\ud800); fix the exporter",
    "no_assistant": "add an assistant message: it is what the model learns to write",
    "no_trained_turn": "every assistant message has weight 0; this example teaches nothing",
    "invalid_weight": "weight must be 0 (do not train on this turn) or 1 (train), on assistant messages only",
    "system_not_first": "put the system message first, or make it a user message",
    "missing_columns": "the header must name the columns of one format, e.g. prompt,completion",
    "csv_ragged_row": "every row needs as many fields as the header; quote fields that contain commas",
    "csv_invalid": "check quoting: a field with commas, quotes or newlines must be in double quotes",
    "parquet_invalid": "the file is not a readable Parquet file",
    "too_few_examples": "add more examples: fine-tuning on fewer than 10 does not generalise",
    "duplicate_example": "remove repeated examples; they over-weight one answer",
    "cross_file_duplicate": "an example in two files (e.g. train and validation) makes validation look better than it is",
    "too_long": "set max_seq_len higher, or choose too_long=truncate or too_long=drop in the training config",
    "blank_lines": "blank lines are skipped",
    "invalid_tool": "a tool is {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": {...}}}",
    "invalid_tool_call": "a call is {\"id\": ..., \"type\": \"function\", \"function\": {\"name\": ..., "
                         "\"arguments\": \"{...}\"}}, on assistant messages",
    "invalid_tool_arguments": "arguments are a JSON object, written as text as OpenAI does: \"{\\\"city\\\": \\\"Paris\\\"}\"",
    "unknown_tool": "call only functions the example's tools list, or add the function to tools",
    "tool_without_call": "put the tool message right after the assistant message whose call it answers",
    "unknown_tool_call_id": "tool_call_id must be the id of one of the calls in the assistant message before it",
}


@dataclass(frozen=True)
class Problem:
    """One located problem. `line` is 1-based (0 when it concerns the whole dataset)."""

    severity: Severity
    code: str
    message: str
    file: str = ""
    line: int = 0
    field: str = ""
    hint: str = ""

    def where(self) -> str:
        place = self.file or "<dataset>"
        if self.line:
            place += f":{self.line}"
        if self.field:
            place += f" {self.field}"
        return place

    def __str__(self) -> str:
        return f"{self.where()}: {self.severity} [{self.code}] {self.message}"

    def to_dict(self) -> dict:
        return asdict(self)


class ProblemLog:
    """Collects problems in the order found; keeps every one (the CLI decides what to show)."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.error_count = 0  # kept as a number: callers compare it before and after a check

    def add(self, severity: Severity, code: str, message: str, *, file: str = "", line: int = 0,
            field: str = "", hint: str | None = None) -> None:
        self.error_count += severity == "error"
        self.problems.append(Problem(severity, code, message, str(file), line, field,
                                     HINTS.get(code, "") if hint is None else hint))

    def error(self, code: str, message: str, **where) -> None:
        self.add("error", code, message, **where)

    def warning(self, code: str, message: str, **where) -> None:
        self.add("warning", code, message, **where)

    @property
    def errors(self) -> list[Problem]:
        return with_severity(self.problems, "error")

    @property
    def warnings(self) -> list[Problem]:
        return with_severity(self.problems, "warning")


def with_severity(problems: list[Problem], severity: str) -> list[Problem]:
    """The problems of one severity ("error" or "warning"), in the order they were found."""
    return [p for p in problems if p.severity == severity]


def summarise_problems(problems: list[Problem], limit: int = 20) -> str:
    """A multi-line text of the first `limit` problems plus the count of the rest."""
    lines = [f"  {p}" + (f"\n    hint: {p.hint}" if p.hint else "") for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def type_name(value: Any) -> str:
    """How a problem message names a JSON value's type."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
