"""What a person (or a script) sees while a run trains: rich progress, JSON lines, or nothing.

Reporters receive the same event dicts that go to metrics.jsonl; they never change training.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class Reporter:
    """Silent base: `--quiet`."""

    def message(self, text: str) -> None:
        pass

    def start(self, info: dict) -> None:
        pass

    def event(self, event: dict) -> None:
        pass

    def phase(self, label: str) -> None:
        """What the run does now (training, validating, saving): a label, not an event."""

    def finish(self, summary: dict) -> None:
        pass


class JsonReporter(Reporter):
    """`--json-logs`: one JSON object per line on stdout, machine-readable."""

    def _write(self, obj: dict) -> None:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    def message(self, text: str) -> None:
        self._write({"type": "message", "text": text})

    def start(self, info: dict) -> None:
        self._write({"type": "start", **info})

    def event(self, event: dict) -> None:
        self._write(event)

    def finish(self, summary: dict) -> None:
        self._write({"type": "summary", **summary})


class ConsoleReporter(Reporter):
    """A progress bar with step/total, epoch, loss, val loss, tokens/s and ETA; a summary table at the end."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = TaskID(0)  # set by start(), before any event
        self.val_loss = "-"

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def start(self, info: dict) -> None:
        table = Table(title=f"run {info.get('name')}", show_header=False, box=None)
        for key, value in info.get("settings", {}).items():
            table.add_row(key, str(value))
        self.console.print(table)
        self.progress = Progress(
            TextColumn("{task.fields[phase]:<10} step {task.completed}/{task.total}"), BarColumn(),
            TextColumn("epoch {task.fields[epoch]}  loss {task.fields[loss]}  val {task.fields[val]}  "
                       "{task.fields[tps]} tok/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console, transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=info.get("total_steps"), completed=info.get("start_step", 0),
                                           epoch="-", loss="-", val="-", tps="-", phase="starting")

    def event(self, event: dict) -> None:
        if self.progress is None:
            return
        if event.get("type") == "train":
            self.progress.update(self.task, completed=event["step"], epoch=f"{event['epoch']:.2f}",
                                 loss=f"{event['loss']:.4f}", tps=f"{event['tokens_per_s']:.0f}")
        elif event.get("type") == "val":
            self.progress.update(self.task, val=f"{event['val_loss']:.4f}")

    def phase(self, label: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, phase=label)

    def finish(self, summary: dict) -> None:
        if self.progress is not None:
            self.progress.update(self.task, phase="done")
            self.progress.stop()
        table = Table(title=f"run {summary.get('name')}: {summary.get('status')}")
        table.add_column("")
        table.add_column("value", justify="right")
        for key, value in summary.get("rows", {}).items():
            table.add_row(key, str(value))
        self.console.print(table)


def make_reporter(*, quiet: bool = False, json_logs: bool = False) -> Reporter:
    if json_logs:
        return JsonReporter()
    if quiet:
        return Reporter()
    return ConsoleReporter()
