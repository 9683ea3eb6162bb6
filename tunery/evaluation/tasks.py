"""Evaluation task files: JSONL rows of a prompt (or messages), a reference and optional metrics.

A row is `{"prompt": "..."}` or `{"messages": [...]}`, plus `"reference"` (a string, or a JSON
object for the JSON metrics) and an optional `"metric"` (a name or a list of names) and `"id"`;
`"source"` (a file name) and `"evidence"` (text) say where retrieval should find the answer.
A chat row without `"reference"` whose last message is the assistant's uses that message as the
reference, so a chat test split is a task file as it stands. Knows nothing of models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import DataError
from tunery.safeio import read_lines
from tunery.types import Location

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TaskExample:
    """One row of a task file: the prompt messages, the reference text and its metrics."""

    id: str
    messages: tuple[dict, ...]
    reference: str
    metrics: tuple[str, ...] = ()
    location: Location | None = None
    meta: dict = field(default_factory=dict, compare=False)
    source: str | None = None  # the document that answers it (for the retrieval hit rate of +rag models)
    evidence: str | None = None  # text the chunk that answers it holds


def load_tasks(path: str | Path, known_metrics: set[str] | None = None) -> list[TaskExample]:
    """Read a JSONL task file; every bad row is reported with its line in one DataError."""
    path = Path(path)
    examples: list[TaskExample] = []
    problems: list[str] = []
    for line_no, line in read_lines(path, what="task file"):  # strict UTF-8, bounded lines, located errors
        if not line.strip():
            continue
        location = Location(str(path), line_no)
        try:
            examples.append(parse_row(line, location, known_metrics))
        except ValueError as exc:
            problems.append(f"{location}: {exc}")
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{len(problems)} invalid row(s) in task file {path}:\n  {shown}{more}",
                        code="invalid_task_file", problems=problems,
                        hint='each line needs "prompt" or "messages", and "reference"')
    if not examples:
        raise DataError(f"task file {path} has no rows", code="empty_task_file")
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise DataError(f"{example.location}: duplicate id {example.id!r}", code="invalid_task_file")
        seen.add(example.id)
    return examples


def parse_row(line: str, location: Location, known_metrics: set[str] | None = None) -> TaskExample:
    """One JSONL line to a TaskExample; raises ValueError naming the offending field."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    messages = parse_messages(row)
    reference = row.get("reference")
    if reference is None and messages[-1]["role"] == "assistant":
        reference, messages = messages[-1]["content"], messages[:-1]
    if reference is None:
        raise ValueError('field "reference" is missing')
    if isinstance(reference, (dict, list)):
        reference = json.dumps(reference, ensure_ascii=False)
    if not isinstance(reference, str):
        raise ValueError('field "reference" must be a string or a JSON object')
    if messages[-1]["role"] == "assistant":
        raise ValueError('field "messages": the prompt must not end with an assistant message')
    metrics = parse_metric_field(row.get("metric"), known_metrics)
    row_id = row.get("id", f"line-{location.line}")
    if not isinstance(row_id, (str, int)):
        raise ValueError('field "id" must be a string or an integer')
    unknown = set(row) - {"prompt", "messages", "reference", "metric", "id", "meta", "source", "evidence"}
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: prompt, messages, reference, metric, id, "
                         "meta, source, evidence")
    for name in ("source", "evidence"):
        if row.get(name) is not None and (not isinstance(row[name], str) or not row[name].strip()):
            raise ValueError(f'field "{name}" must be a non-empty string')
    return TaskExample(id=str(row_id), messages=tuple(messages), reference=reference,
                       metrics=metrics, location=location, meta=row.get("meta") or {},
                       source=row.get("source"), evidence=row.get("evidence"))


def parse_messages(row: dict) -> list[dict]:
    if ("prompt" in row) == ("messages" in row):
        raise ValueError('a row needs exactly one of "prompt" or "messages"')
    if "prompt" in row:
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise ValueError('field "prompt" must be a non-empty string')
        return [{"role": "user", "content": row["prompt"]}]
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError('field "messages" must be a non-empty list')
    parsed = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{index}] must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ValueError(f"messages[{index}].role must be one of {list(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}].content must be a string")
        parsed.append({"role": role, "content": content})
    return parsed


def parse_metric_field(value, known_metrics: set[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError('field "metric" must be a name or a list of names')
    if known_metrics is not None:
        for name in names:
            if name not in known_metrics:
                raise ValueError(f'field "metric": unknown metric {name!r}; known: {sorted(known_metrics)}')
    return tuple(names)
