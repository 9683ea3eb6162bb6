"""Reading a job's run directory while it trains: new metrics become job events and progress, new
checkpoints become checkpoint records, and the finished run becomes the job's outcome.

Reads only the run directory contract (run.json, metrics.jsonl, checkpoints/step-N/manifest.json);
knows nothing about processes or HTTP.
"""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

EVENTS_PER_RUN = 100  # about this many progress events per run, however long it is


@dataclass
class RunFollower:
    """Remembers what it has already reported, so each metric and checkpoint is reported once."""

    run_dir: Path
    reported_step: int = 0  # progress up to here was reported by an earlier attempt
    seen: set = field(default_factory=set)
    checkpoints: set = field(default_factory=set)
    train_tokens: int = 0
    step_times: list = field(default_factory=list)
    last: dict = field(default_factory=dict)

    def new_metrics(self) -> list[dict]:
        """Metric lines not yet reported (a resumed run's redone steps are not reported twice)."""
        fresh = []
        for event in read_metrics(self.run_dir):
            key = (event.get("type"), event.get("step"))
            if key in self.seen or not isinstance(event.get("step"), int):
                continue
            self.seen.add(key)
            if event["step"] <= self.reported_step and not (event["step"] == 0 and not self.reported_step):
                continue
            if event.get("type") == "train":
                self.train_tokens += int(event.get("tokens") or 0)
                self.step_times.append((time.time(), event["step"]))
                self.last = event
            fresh.append(event)
        return fresh

    def new_checkpoints(self) -> list[int]:
        folder = self.run_dir / "checkpoints"
        steps = []
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.startswith("step-") and path.name[5:].isdigit() and (path / "manifest.json").is_file():
                    step = int(path.name[5:])
                    if step not in self.checkpoints:
                        self.checkpoints.add(step)
                        steps.append(step)
        return sorted(steps)

    def estimated_finish(self, total_steps: int | None) -> int | None:
        """Now plus the remaining steps at the pace measured in this attempt."""
        if not total_steps or len(self.step_times) < 2:
            return None
        (t0, s0), (t1, s1) = self.step_times[0], self.step_times[-1]
        if s1 <= s0 or t1 <= t0:
            return None
        return int(time.time() + (total_steps - s1) * (t1 - t0) / (s1 - s0))


def should_report(event: dict, total_steps: int | None) -> bool:
    """Validation always; training progress about EVENTS_PER_RUN times per run, and the last step."""
    if event.get("type") != "train":
        return event.get("type") == "val"
    every = max(1, (total_steps or 0) // EVENTS_PER_RUN)
    return event["step"] % every == 0 or event["step"] == total_steps


def describe(event: dict) -> str:
    if event.get("type") == "val":
        return f"Step {event['step']}: validation loss={event.get('val_loss', float('nan')):.4f}"
    total = event.get("total_steps")
    return (f"Step {event['step']}/{total}: training loss={event['loss']:.4f}, "
            f"{event.get('tokens_per_s', 0):.0f} tokens/s")


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:  # a line being written right now
            continue
    return events


def read_run_json(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def metrics_csv(run_dir: Path) -> bytes:
    """OpenAI's result file: one row per step with train_loss and valid_loss (empty where not measured)."""
    rows: dict[int, dict] = {}
    for event in read_metrics(run_dir):
        step = event.get("step")
        if not isinstance(step, int):
            continue
        row = rows.setdefault(step, {"step": step})
        if event.get("type") == "train":
            row.update(train_loss=event.get("loss"), learning_rate=event.get("lr"),
                       tokens_per_s=event.get("tokens_per_s"))
        elif event.get("type") == "val":
            row["valid_loss"] = event.get("val_loss")
    out = io.StringIO()
    writer = csv.DictWriter(out, ["step", "train_loss", "valid_loss", "learning_rate", "tokens_per_s"],
                            extrasaction="ignore")
    writer.writeheader()
    for step in sorted(rows):
        writer.writerow(rows[step])
    return out.getvalue().encode()


def checkpoint_metrics(run_dir: Path, step: int) -> dict:
    """The losses measured at a checkpoint's step (OpenAI's checkpoint `metrics`)."""
    metrics: dict = {"step": step}
    for event in read_metrics(run_dir):
        if event.get("step") == step and event.get("type") == "train":
            metrics["train_loss"] = event.get("loss")
        elif event.get("step") == step and event.get("type") == "val":
            metrics["valid_loss"] = event.get("val_loss")
    return metrics
