"""Turn rated completions into training data: chat-format JSONL and (chosen, rejected) pairs.

Corrected answers become examples with the correction as the assistant turn; positively rated
answers become examples as they were; negatively rated answers without a correction are left out.
Pairs are written in OpenAI's preference format. A scrubber (tunery.platform.pii.Scrubber, passed
in by the caller) replaces personal data in each example before anything is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from tunery.errors import ConfigError
from tunery.safeio import writable_target, write_private_text
from tunery.store.db import Store
from tunery.store.owners import Actor
from tunery.store.requests import Feedback, LoggedCompletion, list_rated_completions


@dataclass(frozen=True)
class ExportSummary:
    examples: int
    pairs: int
    skipped: int  # rated answers that became no example (thumbs-down without a correction, duplicates)


def parse_since(since: str | None) -> str | None:
    """`YYYY-MM-DD` or an ISO datetime → the store's timestamp format (UTC)."""
    if not since:
        return None
    try:
        parsed = datetime.fromisoformat(since) if "T" in since else datetime.combine(date.fromisoformat(since),
                                                                                       datetime.min.time())
    except ValueError:
        raise ConfigError(f"--since {since!r} is not a date", hint="use YYYY-MM-DD, e.g. 2026-01-31") from None
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _prompt_messages(entry: LoggedCompletion) -> list[dict]:
    if entry.kind == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in entry.messages]
    return [{"role": "user", "content": entry.messages[0]["content"] if entry.messages else ""}]


def build_example(entry: LoggedCompletion, feedback: Feedback) -> dict | None:
    """The chat example this feedback teaches, or None when it teaches nothing."""
    if feedback.correction:
        answer = feedback.correction
    elif feedback.rating == 1:
        answer = entry.outputs[0] if entry.outputs else ""
    else:
        return None
    if not answer.strip():
        return None
    return {"messages": _prompt_messages(entry) + [{"role": "assistant", "content": answer}]}


def build_pair(entry: LoggedCompletion, feedback: Feedback) -> dict | None:
    """A preference pair: the correction is chosen over the logged answer."""
    rejected = entry.outputs[0] if entry.outputs else ""
    if not feedback.correction or not feedback.correction.strip() or feedback.correction == rejected:
        return None
    prompt = _prompt_messages(entry)
    return {"input": {"messages": prompt}, "preferred_output": [{"role": "assistant", "content": feedback.correction}],
            "non_preferred_output": [{"role": "assistant", "content": rejected}]}


def scrub_row(row: dict | None, scrubber) -> dict | None:
    """Every message of one example (or pair) scrubbed with one placeholder table."""
    if row is None or scrubber is None:
        return row
    messages = [m for key in ("messages", "input", "preferred_output", "non_preferred_output") if key in row
                for m in (row[key]["messages"] if key == "input" else row[key])]
    texts = scrubber.scrub_example([m["content"] for m in messages]).texts
    for message, text in zip(messages, texts, strict=True):
        message["content"] = text
    return row


def export_feedback(store: Store, actor: Actor, out: Path, *, since: str | None = None, model: str | None = None,
                    pairs_out: Path | None = None, scrubber=None, overwrite: bool = False) -> ExportSummary:
    """Write the examples (and optionally the pairs) of what `actor` may see as JSONL; returns how many of each.

    An existing file is replaced only with `overwrite`; a folder or device never. Files are 0600:
    they hold users' prompts and answers.
    """
    since_ts = parse_since(since)
    if pairs_out is not None and Path(pairs_out).expanduser().resolve() == Path(out).expanduser().resolve():
        raise ConfigError(f"--pairs {pairs_out} is the --out file: the pairs would replace the examples",
                          code="same_target", hint="write the pairs to a file of their own")
    targets = [writable_target(p, overwrite=overwrite, what="--out" if p == out else "--pairs")
               for p in (out, pairs_out) if p is not None]
    rated = list_rated_completions(store, actor, since=since_ts, model=model)
    examples, pairs, seen = [], [], set()
    for entry, feedback in rated:
        example = scrub_row(build_example(entry, feedback), scrubber)
        key = json.dumps(example, sort_keys=True)
        if example is not None and key not in seen:  # the same question answered alike teaches once
            seen.add(key)
            examples.append(example)
        pair = scrub_row(build_pair(entry, feedback), scrubber)
        if pair is not None:
            pairs.append(pair)
    write_private_text(targets[0], _jsonl(examples), what="--out")
    if pairs_out is not None:
        write_private_text(targets[1], _jsonl(pairs), what="--pairs")
    return ExportSummary(examples=len(examples), pairs=len(pairs), skipped=len(rated) - len(examples))


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
