"""Helpers for dataset tests: write small valid datasets and look up problems by code."""

from __future__ import annotations

import json
from pathlib import Path


def chat_row(i: int, **extra) -> dict:
    return {"messages": [{"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"answer {i}"}], **extra}


def chat_lines(n: int = 10, start: int = 0) -> list[str]:
    return [json.dumps(chat_row(i)) for i in range(start, start + n)]


def write_lines(path: Path, lines: list[str], *, newline: str = "\n", final_newline: bool = True) -> Path:
    text = newline.join(lines) + (newline if final_newline else "")
    path.write_bytes(text.encode("utf-8"))
    return path


def problems_with(report, code: str) -> list:
    return [p for p in report.problems if p.code == code]


def only_problem(report, code: str):
    found = problems_with(report, code)
    assert len(found) == 1, f"expected one {code}, got {[str(p) for p in report.problems]}"
    return found[0]
