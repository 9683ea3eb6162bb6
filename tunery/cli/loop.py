"""`tunery loop run|watch`: feedback on a model's versions -> candidate -> gates -> promotion."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import typer

from tunery.cli import app
from tunery.cli.output import console, err_console, handle_errors
from tunery.errors import ConfigError, TuneryError
from tunery.platform.feedback_loop import check_loop_inputs, run_loop
from tunery.platform.loop_gate import FEEDBACK_GATE, TOLERANCE
from tunery.store import open_store

loop_app = typer.Typer(help="Close the loop: feedback becomes the next version, promoted past the gates.",
                       no_args_is_help=True)
app.add_typer(loop_app, name="loop")
EXIT = {"promoted": 0, "candidate": 0, "too_little_feedback": 0, "gate_failed": 3, "failed": 1}
UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_EVERY_S, MAX_EVERY_S = 1, 365 * 86400


@loop_app.command("run")
@handle_errors
def run_command(
    name: str = typer.Argument(..., help="Registered model name; its production version is the starting point."),
    tasks: Path | None = typer.Option(None, "--tasks", "-t", help="Your task file: the candidate must not regress on it."),
    gate: list[str] = typer.Option(None, "--gate", "-g", help="Gate rule (repeatable; default no-regression)."),
    min_feedback: int = typer.Option(1, "--min-feedback", min=1, help="Do nothing below this many new examples."),
    review: bool = typer.Option(False, "--review", help="Leave a passing candidate as `candidate` for a person."),
    approved_only: bool = typer.Option(False, "--approved-only", help="Train only on feedback a reviewer approved "
                                       "in the console's review queue (with the reviewer's edits)."),
    general: bool = typer.Option(True, "--general/--no-general", help="Also gate on the general-skills tasks."),
    feedback_gate: str = typer.Option(FEEDBACK_GATE, "--feedback-gate", help="Rule on the feedback the candidate "
                                      "trained on (default: at least 80% of the corrected answers reproduced)."),
    tolerance: float = typer.Option(TOLERANCE, "--tolerance", min=0, help="How far below production the candidate "
                                    "may score on held-out feedback, general skills (and your tasks without --gate)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the dataset, run and reports "
                                    "(default TUNERY_HOME/loops/NAME/TIME)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N rows of each task file."),
    set_: list[str] = typer.Option(None, "--set", help="Training config override KEY=VALUE (repeatable)."),
    job_timeout_s: float | None = typer.Option(None, "--job-timeout-s", min=1, help="Give up (and cancel the "
                                               "candidate's job) when it has not finished after this many seconds; "
                                               "default: wait for a worker as long as it takes."),
):
    """One pass: collect feedback, train a candidate from production as a job on the queue (a worker runs it:
    `tunery worker`, or `tunery serve --workers N`), compare, promote when the gates pass."""
    result = _run_once(name, tasks=tasks, gates=gate or [], min_feedback=min_feedback, review=review,
                       general=general, out_dir=out, limit=limit, overrides=set_ or [], approved_only=approved_only,
                       feedback_gate=feedback_gate, tolerance=tolerance, job_timeout_s=job_timeout_s)
    raise typer.Exit(EXIT.get(result.status, 1))


@loop_app.command("watch")
@handle_errors
def watch_command(
    name: str = typer.Argument(..., help="Registered model name."),
    every: str = typer.Option("1d", "--every", help="How often to run: 30m, 6h, 1d (1s to 365d)."),
    tasks: Path | None = typer.Option(None, "--tasks", "-t", help="Your task file."),
    gate: list[str] = typer.Option(None, "--gate", "-g", help="Gate rule (repeatable)."),
    min_feedback: int = typer.Option(50, "--min-feedback", min=1, help="Do nothing below this many new examples."),
    review: bool = typer.Option(False, "--review", help="Leave passing candidates for a person."),
    approved_only: bool = typer.Option(False, "--approved-only", help="Train only on reviewer-approved feedback."),
    max_runs: int | None = typer.Option(None, "--max-runs", min=1, help="Stop after this many passes."),
    feedback_gate: str = typer.Option(FEEDBACK_GATE, "--feedback-gate", help="Rule on the feedback trained on."),
    tolerance: float = typer.Option(TOLERANCE, "--tolerance", min=0, help="Allowed drop below production."),
    general: bool = typer.Option(True, "--general/--no-general", help="Also gate on the general-skills tasks."),
    set_: list[str] = typer.Option(None, "--set", help="Training config override KEY=VALUE (repeatable)."),
):
    """Run the loop on a schedule (one pass at a time per NAME, each training through the queue).

    A pass that fails (another loop holds NAME, the database is away) is reported and the next one
    runs on schedule; SIGTERM stops the watch, cancelling a candidate job it was waiting for."""
    interval = parse_every(every)
    check_loop_inputs(name, tasks=tasks, gates=gate or [], feedback_gate=feedback_gate, tolerance=tolerance,
                      overrides=set_ or [])  # a mistake of the user's fails the watch now, not every pass
    signal.signal(signal.SIGTERM, _interrupt)
    runs = 0
    while max_runs is None or runs < max_runs:
        try:
            _run_once(name, tasks=tasks, gates=gate or [], min_feedback=min_feedback, review=review, general=general,
                      out_dir=None, limit=None, overrides=set_ or [], approved_only=approved_only,
                      feedback_gate=feedback_gate, tolerance=tolerance)
        except TuneryError as exc:
            err_console.print(f"{name}: pass failed: {exc.code}: {exc.message}", highlight=False, markup=False)
        runs += 1
        if max_runs is None or runs < max_runs:
            time.sleep(interval)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt  # unwinds the pass: its job is cancelled and its lease released


def parse_every(text: str) -> float:
    match = re.fullmatch(r"\s*(\d{1,9}(?:\.\d+)?)\s*([smhd])\s*", text)
    if not match:
        raise ConfigError(f"--every {text!r} is not a duration", hint="write e.g. 30m, 6h or 1d")
    interval_s = float(match.group(1)) * UNITS_S[match.group(2)]
    if not MIN_EVERY_S <= interval_s <= MAX_EVERY_S:  # a busy loop on the database, or past what sleep() takes
        raise ConfigError(f"--every {text!r} must be between 1s and 365d", hint="write e.g. 30m, 6h or 1d")
    return interval_s


def _run_once(name, **kwargs):
    result = run_loop(open_store(), name, on_event=_print_event, **kwargs)
    line = f"{result.name}: {result.status}: {result.message}" + (f" (job {result.job})" if result.job else "")
    (err_console if result.status in ("failed", "gate_failed") else console).print(line, highlight=False)
    console.print(f"report: {result.report}", highlight=False)
    return result


def _print_event(event: dict) -> None:
    """A line per job event (steps, losses, checkpoints): the candidate's training as it happens."""
    err_console.print(f"  {event['message']}", highlight=False, markup=False)


def check_watch_args(name: str, args: list[str]) -> None:
    """`serve --loop-arg` options, parsed as `tunery loop watch` will parse them: a typo stops the server's
    start instead of a watcher that exits unseen."""
    # loop_app is a group, which typer types as a plain Command
    command = typer.main.get_command(loop_app).commands["watch"]  # type: ignore[attr-defined]
    try:
        command.make_context("tunery loop watch", [name, *args])
    except Exception as exc:  # click's usage errors (typer vendors click: no public class to name)
        if not hasattr(exc, "format_message"):
            raise
        raise ConfigError(f"--loop-arg: {exc.format_message()}", hint="see `tunery loop watch --help`") from None

