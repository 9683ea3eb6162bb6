"""LLM-as-judge: a local judge model grades each prediction against a rubric, PASS or FAIL with a reason.

The judge runs through the same greedy generation as the evaluated models, so verdicts are
deterministic. A reply without a verdict counts as FAIL and says so in its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import ConfigError
from tunery.models import load_model
from tunery.safeio import read_text

VERDICT = re.compile(r"\b(PASS|FAIL)\b", re.IGNORECASE)
JUDGE_SYSTEM = ("You are a strict grader. Decide whether the answer satisfies the rubric. Reply on one line: "
                "PASS or FAIL, a colon, then a one-sentence reason.")
DEFAULT_RUBRIC = "The answer is correct, complete and consistent with the reference answer."


@dataclass(frozen=True)
class JudgeSpec:
    """Which local model judges, and the rubric it applies."""

    model_ref: str
    rubric: str = DEFAULT_RUBRIC
    max_new_tokens: int = 64


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str


def read_rubric(value: str | None) -> str:
    """A rubric given inline, or as `@path` to a text file."""
    if not value:
        return DEFAULT_RUBRIC
    if value.startswith("@"):
        return read_text(Path(value[1:]), what="rubric file", error=ConfigError).strip()
    return value.strip()


def build_judge_prompt(rubric: str, messages: tuple[dict, ...] | list[dict], reference: str,
                       prediction: str) -> list[dict]:
    question = "\n".join(m["content"] for m in messages if m["role"] == "user")
    body = (f"Rubric:\n{rubric}\n\nQuestion:\n{question}\n\nReference answer:\n{reference}\n\n"
            f"Answer to grade:\n{prediction}\n\nVerdict (PASS or FAIL, then the reason):")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": body}]


def parse_verdict(reply: str) -> Verdict:
    """The first PASS/FAIL word decides; the text after it (or the whole reply) is the reason."""
    match = VERDICT.search(reply)
    if match is None:
        return Verdict(False, f"no verdict in judge reply: {reply.strip()[:200]!r}")
    reason = reply[match.end():].lstrip(" :.-\n").strip() or reply.strip()
    return Verdict(match.group(1).upper() == "PASS", reason[:500])


def judge_predictions(spec: JudgeSpec, examples, predictions: list[str], *, batch_size: int = 8,
                      dtype: str = "auto") -> list[Verdict]:
    """Load the judge model once and grade every (example, prediction) pair."""
    from tunery.evaluation.generation import generate_texts

    model, tokenizer = load_model(spec.model_ref, dtype=dtype)
    prompts = [build_judge_prompt(spec.rubric, ex.messages, ex.reference, pred)
               for ex, pred in zip(examples, predictions)]
    replies = generate_texts(model, tokenizer, prompts, max_new_tokens=spec.max_new_tokens,
                             batch_size=batch_size)
    return [parse_verdict(reply.text) for reply in replies]
