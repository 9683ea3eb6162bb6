"""The loop's promotion gate: did the candidate learn what it was taught, without losing what it knew?

Three comparisons against production: (1) the feedback the candidate trained on, where it must
reproduce the corrected answers (`contains>=0.8` by default: at least 80% of them, as said);
(2) the held-out fifth of the feedback and the general-skills tasks, where it may not fall behind
production by more than a tolerance; (3) the user's own tasks, under the user's rules (default the
same no-regression). Held-out feedback is not asked to improve: a correction of a fact teaches that
fact, and no other, so "better on feedback it never saw" cannot be met by a loop that works.
Knows nothing of the store or of promotion.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunery.platform.registry import run_gates
from tunery.store.registry import Version

FEEDBACK_GATE = "contains>=0.8"
TOLERANCE = 0.05
TASK_METRICS = ["contains", "token_f1"]


def write_feedback_tasks(path: Path, examples: list[dict]) -> Path:
    """Chat examples as a task file: the prompt, and the answer given as the reference."""
    path.write_text("".join(json.dumps({"messages": row["messages"][:-1], "reference": row["messages"][-1]["content"],
                                        "metric": TASK_METRICS}, ensure_ascii=False) + "\n" for row in examples),
                    encoding="utf-8")
    path.chmod(0o600)  # prompts and answers: owner-only
    return path


def gate_candidate(production: Version, candidate: Version, *, trained: Path, held_out: Path | None,
                   tasks: str | Path | None, gates: list[str], general: bool, out_dir: Path,
                   feedback_gate: str = FEEDBACK_GATE, tolerance: float = TOLERANCE, limit: int | None = None,
                   weights: str | None = None) -> dict:
    """Every comparison the loop gates on, merged into one report (`passed`, `gates`, `comparisons`).

    `weights`: score both versions as `tunery serve --weights W` serves them (None: Hugging Face generate on
    full precision), as `tunery models promote --weights` does."""
    keep = f"no-regression:{tolerance:g}"
    parts = [("trained feedback", run_gates(production, candidate, tasks=trained, gates=[feedback_gate],
                                            general=False, out_dir=out_dir / "compare-trained",
                                            max_new_tokens=answer_budget(trained), weights=weights))]
    if held_out is not None:
        parts.append(("held-out feedback", run_gates(production, candidate, tasks=held_out, gates=[keep],
                                                     general=False, out_dir=out_dir / "compare-held-out",
                                                     max_new_tokens=answer_budget(held_out), weights=weights)))
    if tasks is not None:
        parts.append(("your tasks", run_gates(production, candidate, tasks=tasks, gates=list(gates) or [keep],
                                              general=False, out_dir=out_dir / "compare", limit=limit, weights=weights)))
    if general:
        parts.append(("general skills", run_gates(production, candidate, tasks=None, gates=[keep], general=True,
                                                  out_dir=out_dir / "compare-general", limit=limit, weights=weights)))
    comparisons = [{**c, "kind": kind} for kind, report in parts for c in report["comparisons"]]
    return {"passed": all(report["passed"] for _, report in parts), "baseline": production.ref,
            "candidate": candidate.ref, "gates": [{**g, "kind": kind} for kind, report in parts for g in report["gates"]],
            "comparisons": comparisons, "feedback_gate": feedback_gate, "tolerance": tolerance,
            "weights": weights or "full"}


def answer_budget(task_file: Path) -> int:
    """Room for the longest corrected answer and some (a reply that rambles past it is wrong anyway)."""
    words = max(len(json.loads(line)["reference"].split()) for line in task_file.read_text(encoding="utf-8").splitlines())
    return min(256, 16 + 4 * words)
