"""The feedback loop: feedback on NAME's versions becomes a scrubbed dataset, a candidate, a gated promotion.

One pass (`run_loop`): collect the feedback given on NAME's versions since production was
registered; corrections and thumbs-up answers become examples (scrubbed of PII, deduplicated, checked
by the data checks), a fifth held out as a "feedback" task; add a replay sample of production's own
training data; train a candidate from production's adapter with `auto` settings as a job on the
queue (run by any worker sharing the store; this process waits, reporting its events); register it
as NAME@N+1 `candidate`; gate it against production (tunery.platform.loop_gate: the corrections it
trained on reproduced, no regression beyond a tolerance on held-out feedback, general skills and the
user's tasks); promote it when the gates pass (unless `review`). A report (JSON and HTML)
records the timeline either way. One loop per NAME at a time, across machines (a lease in the store).
"""

from __future__ import annotations

import html
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunery.data import load_dataset
from tunery.errors import ConfigError, TuneryError
from tunery.evaluation.gates import parse_gate
from tunery.evaluation.tasks import load_tasks
from tunery.paths import tunery_home
from tunery.platform import jobs, registry
from tunery.platform.loop_gate import FEEDBACK_GATE, TOLERANCE, gate_candidate, write_feedback_tasks
from tunery.platform.loop_job import job_settings, submit_candidate, wait_for_job
from tunery.platform.loop_lock import loop_lock
from tunery.platform.pii import Scrubber
from tunery.safeio import read_lines, write_private_text
from tunery.store import registry as rows
from tunery.store.db import Store
from tunery.store.feedback_export import build_example, scrub_row
from tunery.store.feedback_reviews import apply_reviews
from tunery.store.owners import LOCAL_OWNER
from tunery.store.requests import list_rated_completions

PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*_\d+>")


@dataclass
class LoopResult:
    """What one pass did: `status` is promoted, candidate, gate_failed, too_little_feedback or failed."""

    name: str
    status: str
    message: str
    production: str | None = None
    candidate: str | None = None
    job: str | None = None
    examples: int = 0
    held_out: int = 0
    replayed: int = 0
    gate: dict | None = None
    report: str | None = None
    timeline: list[dict] = field(default_factory=list)


def collect_examples(store: Store, name: str, since: str, scrubber: Scrubber, *,
                     approved_only: bool = False) -> list[dict]:
    """Chat examples from the feedback on NAME's versions since `since`, scrubbed and deduplicated.

    With `approved_only`, only feedback a reviewer approved counts, with the reviewer's edit in place
    of the correction given (the console's review queue)."""
    examples, seen = [], set()
    rated = list_rated_completions(store, LOCAL_OWNER, since=since)
    if approved_only:
        rated = apply_reviews(store, rated)
    for entry, feedback in rated:
        if not entry.model.startswith(f"{name}@"):
            continue
        example = scrub_row(build_example(entry, feedback), scrubber)
        if example is None or not _teaches(example):
            continue
        key = json.dumps(example, sort_keys=True)
        if key not in seen:
            seen.add(key)
            examples.append(example)
    return examples


def _teaches(example: dict) -> bool:
    """An answer left with nothing but placeholders once scrubbed teaches nothing but placeholders."""
    answer = example["messages"][-1]["content"]
    return bool(re.sub(r"\W", "", PLACEHOLDER.sub("", answer)))


def check_loop_inputs(name: str, *, tasks: str | Path | None = None, gates: list[str] | tuple[str, ...] = (),
                      feedback_gate: str = FEEDBACK_GATE, tolerance: float = TOLERANCE,
                      overrides: list[str] | None = None) -> None:
    """The user's own inputs, checked before any pass: a typo fails now, not after a candidate has trained
    (and a watch does not report the same mistake on every pass)."""
    registry.parse_ref(name)
    for rule in (feedback_gate, *gates):
        parse_gate(rule)
    if tolerance < 0:
        raise ConfigError(f"tolerance must be 0 or more, got {tolerance:g}", code="invalid_gate")
    if tasks is not None:
        if not Path(tasks).is_file():
            raise ConfigError(f"task file {tasks} does not exist" if not Path(tasks).exists()
                              else f"task file {tasks} is not a file", code="file_not_found")
        load_tasks(tasks)  # an empty, binary or malformed task file is a located error now
    job_settings(overrides or [])


def run_loop(store: Store, name: str, *, tasks: str | Path | None = None, gates: list[str] | tuple[str, ...] = (),
             min_feedback: int = 1, review: bool = False, out_dir: str | Path | None = None, general: bool = True,
             limit: int | None = None, overrides: list[str] | None = None, seed: int = 0,
             approved_only: bool = False, on_event: Callable[[dict], None] | None = None, poll_s: float = 1.0,
             job_timeout_s: float | None = None, feedback_gate: str = FEEDBACK_GATE,
             tolerance: float = TOLERANCE, weights: str | None = None) -> LoopResult:
    """One pass of the loop for NAME; never leaves production changed unless the gates passed.

    `weights`: the gates score both versions as `tunery serve --weights W` serves them (full, int8, int4)."""
    check_loop_inputs(name, tasks=tasks, gates=gates, feedback_gate=feedback_gate, tolerance=tolerance,
                      overrides=overrides)
    if weights is not None:
        from tunery.inference.quant import check_weight_format  # loads torch: only when weights are asked for

        check_weight_format(weights)  # a typo stops the pass before any training
    with loop_lock(store, name) as lease:
        production = registry.resolve_version(store, name)
        out = Path(out_dir) if out_dir else tunery_home() / "loops" / name / time.strftime("%Y%m%d-%H%M%S")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder", code="target_not_folder",
                              hint="give a folder for the loop's dataset, run and reports")
        out.mkdir(parents=True, exist_ok=True)
        result = LoopResult(name=name, status="failed", message="", production=production.ref)
        examples = collect_examples(store, name, production.created_at, Scrubber(), approved_only=approved_only)
        result.timeline.append({"step": "collect", "examples": len(examples), "since": production.created_at})
        if len(examples) < max(min_feedback, 1):
            result.status = "too_little_feedback"
            result.message = (f"{len(examples)} usable feedback examples on {name} since {production.ref} was "
                              f"registered; the loop needs {max(min_feedback, 1)}: nothing to do")
            return _finish(result, out)
        try:
            _train_and_gate(store, name, production, examples, result, out, lease, tasks=tasks, gates=gates,
                            general=general, limit=limit, overrides=overrides or [], review=review, seed=seed,
                            on_event=on_event, poll_s=poll_s, job_timeout_s=job_timeout_s,
                            feedback_gate=feedback_gate, tolerance=tolerance, weights=weights)
        except TuneryError as exc:  # a failed candidate leaves production as it was
            result.status, result.message = "failed", f"{exc.code}: {exc.message}"
        return _finish(result, out)


def _train_and_gate(store, name, production, examples, result, out, lease, *, tasks, gates, general, limit, overrides,
                    review, seed, on_event, poll_s, job_timeout_s, feedback_gate, tolerance, weights) -> None:
    rng = random.Random(seed)
    rng.shuffle(examples)
    held = examples[:len(examples) // 5] if len(examples) >= 5 else []
    train_rows = examples[len(held):]
    replay = _replay_rows(production, len(train_rows), rng)
    result.examples, result.held_out, result.replayed = len(train_rows), len(held), len(replay)
    train_path = _write_jsonl(out / "train.jsonl", train_rows + replay)
    load_dataset(train_path, min_examples=1)  # the data checks: a bad example stops here, located
    trained = write_feedback_tasks(out / "feedback_trained.jsonl", train_rows)
    held_out = write_feedback_tasks(out / "feedback_held_out.jsonl", held) if held else None
    result.timeline.append({"step": "dataset", "train": len(train_rows), "replay": len(replay), "held_out": len(held)})
    job = submit_candidate(store, name, production, train_path, overrides=overrides, seed=seed)
    result.job = job["id"]
    if on_event is not None:
        on_event({"message": f"Queued the candidate's training as job {job['id']}; waiting for a worker "
                             "(`tunery worker`, or `tunery serve --workers N`)", "data": {}})
    job = wait_for_job(store, job["id"], on_event=on_event, poll_s=poll_s, timeout_s=job_timeout_s)
    if job["status"] != "succeeded":
        error = job["error"] or {}
        raise ConfigError(f"the candidate job {job['id']} {job['status']}"
                          + (f": {error.get('code')}: {error.get('message')}" if error.get("message") else ""),
                          code="candidate_incomplete")
    run_dir = jobs.run_dir_of(job["id"])
    candidate = registry.register_run(store, run_dir, name, job_id=job["id"], created_by="loop", alias="candidate",
                                      rag_index=production.rag_index)  # it answers from the same documents
    result.candidate = candidate.ref
    result.timeline.append({"step": "train", "job": job["id"], "run": str(run_dir), "version": candidate.ref,
                            "trained_tokens": job["trained_tokens"], "steps": job["tunery"]["step"]})
    report = gate_candidate(production, candidate, trained=trained, held_out=held_out, tasks=tasks, gates=list(gates),
                            general=general, out_dir=out, feedback_gate=feedback_gate, tolerance=tolerance, limit=limit,
                            weights=weights)
    result.gate = report
    rows.attach_report(store, name, candidate.version, {"kind": "loop", "gate": report})
    result.timeline.append({"step": "compare", "passed": report["passed"]})
    if not report["passed"]:
        rows.record_refusal(store, name, registry.DEFAULT_ALIAS, production.version, candidate.version,
                            actor="loop", action="promote", gate=report)
        result.status, result.message = "gate_failed", f"{candidate.ref} stays candidate: a gate failed"
    elif review:
        result.status, result.message = "candidate", f"{candidate.ref} passed the gates; left as candidate for review"
    else:
        lease.check()
        registry.promote(store, candidate.ref, actor="loop", reason="loop: gates passed", gate_report=report)
        result.status, result.message = "promoted", f"{candidate.ref} passed the gates and is production"
    result.timeline.append({"step": "decide", "status": result.status})


def _replay_rows(production, count: int, rng: random.Random) -> list[dict]:
    """Up to `count` examples of production's own training file, so old skills are rehearsed."""
    train = (production.lineage.get("data_files") or {}).get("train") or {}
    path = Path(train.get("path") or "")
    if count <= 0 or not path.is_file() or path.suffix not in (".jsonl", ".ndjson"):
        return []
    lines = [line for _, line in read_lines(path, what="training file") if line.strip()]  # line-capped
    return [json.loads(line) for line in rng.sample(lines, min(count, len(lines)))]


def _write_jsonl(path: Path, rows_: list[dict]) -> Path:
    write_private_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_))  # prompts, answers
    return path


def _finish(result: LoopResult, out: Path) -> LoopResult:
    result.report = str(out / "report.html")
    (out / "report.json").write_text(json.dumps(asdict(result), indent=2, default=str) + "\n", encoding="utf-8")
    items = "".join(f"<li><b>{html.escape(str(e.get('step')))}</b> {html.escape(json.dumps(e, default=str))}</li>"
                    for e in result.timeline)
    (out / "report.html").write_text(
        f"<!doctype html><meta charset=utf-8><title>loop {html.escape(result.name)}</title>"
        f"<h1>{html.escape(result.name)}: {html.escape(result.status)}</h1><p>{html.escape(result.message)}</p>"
        f"<p>production {html.escape(str(result.production))}, candidate {html.escape(str(result.candidate))}</p>"
        f"<ol>{items}</ol>", encoding="utf-8")
    return result
