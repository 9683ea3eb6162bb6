"""`data check` as a library call: read, validate, optionally count tokens, and summarise as one dict.

The CLI renders this dict (or prints it as JSON); nothing here prints or exits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from tunery.data.dataset import MIN_EXAMPLES, read_dataset
from tunery.data.problems import Problem, ProblemLog
from tunery.data.template import encode_conversation
from tunery.data.tokenized import chunk_token_ids
from tunery.errors import DataError
from tunery.types import Conversation

DEFAULT_MAX_SEQ_LEN = 2048
MAX_PROBLEMS_IN_REPORT = 1000


def check_dataset(paths: str | Path | Iterable[str | Path], *, tokenizer=None,
                  max_seq_len: int = DEFAULT_MAX_SEQ_LEN, min_examples: int = MIN_EXAMPLES) -> dict:
    """The full check report: files, summary, problems (first 1000, with the total). Never raises on data."""
    report = read_dataset(paths, min_examples=min_examples)
    problems = list(report.problems)
    convs = report.conversations
    summary = {
        "formats": report.formats,
        "examples": len(convs),
        "turns": sum(len(c.turns) for c in convs if c.kind == "chat"),
        "trained_turns": sum(sum(t.train for t in c.turns) for c in convs if c.kind == "chat"),
        "documents": sum(1 for c in convs if c.kind == "text"),
        "blank_lines": sum(f.stats.blank_lines for f in report.files),
        "length_chars": percentiles([sum(len(t.content) for t in c.turns) for c in convs]),
        "tokens": None,
    }
    if tokenizer is not None:
        token_summary, token_problems = measure_tokens(convs, tokenizer, max_seq_len)
        summary["tokens"] = token_summary
        problems.extend(token_problems)
    errors = [p for p in problems if p.severity == "error"]
    summary["warnings"] = len(problems) - len(errors)
    summary["errors"] = len(errors)
    return {
        "ok": not errors,
        "files": [f.to_dict() for f in report.files],
        "summary": summary,
        "problems": [p.to_dict() for p in problems[:MAX_PROBLEMS_IN_REPORT]],
        "problems_total": len(problems),
    }


def measure_tokens(conversations: Sequence[Conversation], tokenizer, max_seq_len: int) -> tuple[dict, list[Problem]]:
    """Token counts per example with the model's template; chat examples over `max_seq_len` are listed."""
    log = ProblemLog()
    lengths: list[int] = []
    total = trained = too_long = chunks = 0
    for conv in conversations:
        where = {"file": conv.location.file, "line": conv.location.line} if conv.location else {}
        try:
            example = encode_conversation(tokenizer, conv)
        except DataError as exc:  # e.g. a template that rejects this role order
            log.error(exc.code, exc.message, hint=exc.hint or "", **where)
            continue
        length = len(example.input_ids)
        lengths.append(length)
        total += length
        trained += example.num_trained
        if conv.kind == "text":
            chunks += len(chunk_token_ids(example.input_ids, max_seq_len)) if max_seq_len >= 2 else 0
        elif length > max_seq_len:
            too_long += 1
            log.warning("too_long", f"{length} tokens > max_seq_len {max_seq_len}", **where)
    summary = {"total": total, "trained": trained, "max_seq_len": max_seq_len, "too_long": too_long,
               "text_chunks": chunks, "length": percentiles(lengths)}
    return summary, log.problems


def percentiles(values: Sequence[int]) -> dict | None:
    """p50/p90/p99/max by the nearest-rank method (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: int) -> int:
        return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]

    return {"min": ordered[0], "p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1],
            "mean": round(sum(ordered) / len(ordered), 1)}
