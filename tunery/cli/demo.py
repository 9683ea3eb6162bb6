"""`tunery demo`: LoRA-tune the default model on examples/helpdesk and show tickets before and after.

It orchestrates two library steps (`tunery.train`, then `compare_models`) and renders both. Sized for a 2-core laptop CPU (about ten minutes): a fixed number of steps over the training split,
validation loss before and after, then base and tuned compared on the test split (HTML report).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

import tunery
from tunery.cli import app
from tunery.cli.output import console as cli_console
from tunery.cli.output import handle_errors
from tunery.config import TrainConfig
from tunery.data.dataset import load_dataset
from tunery.errors import ConfigError
from tunery.paths import runs_dir

DEMO_STEPS = 24
DEMO_VAL_EXAMPLES = 24  # enough for a stable loss, cheap enough to run twice on 2 cores
DEMO_SETTINGS = {"batch_size": 8, "learning_rate": 2e-3, "warmup_steps": 3, "lr_schedule": "cosine",
                 "save_every_steps": 20}


def find_helpdesk_dir() -> Path:
    """examples/helpdesk of this checkout (the demo runs from a clone, as `make demo` does)."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        folder = base / "examples" / "helpdesk"
        if (folder / "train.jsonl").is_file():
            return folder
    raise ConfigError("examples/helpdesk/train.jsonl not found", code="demo_data_missing",
                      hint="run `tunery demo` (or `make demo`) from the root of a tunery checkout")


def demo_config(folder: Path, max_steps: int) -> TrainConfig:
    name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    return TrainConfig.model_validate({
        "name": name, "base_model": "smollm2-135m-instruct", "method": "lora", "output_dir": str(runs_dir() / name),
        # Validation: the first DEMO_VAL_EXAMPLES of validation.jsonl, passed to train() directly.
        "data": {"train": str(folder / "train.jsonl"), "val_fraction": 0.0, "max_seq_len": 512,
                 "too_long": "truncate"},
        "lora": {"rank": 16, "alpha": 32},
        "train": {**DEMO_SETTINGS, "max_steps": max_steps, "epochs": 1},
    })


DEMO_TEST_EXAMPLES = 20
DEMO_FIELDS = ["category", "priority", "team"]  # the free-text summary rarely matches word for word


def is_triage_json(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == {"category", "priority", "team", "summary"}


def run_demo(*, max_steps: int | None = None, num_examples: int = 3, console: Console | None = None) -> dict:
    """Train, then compare base and tuned on the helpdesk test split and print the report's path."""
    from tunery.evaluation.compare import compare_models
    from tunery.training.precision import set_threads
    from tunery.training.trainable_model import quiet_libraries

    console = console or Console()
    quiet_libraries()
    set_threads(None)  # generation runs on the same thread budget as training
    folder = find_helpdesk_dir()
    console.print(f"[bold]tunery demo[/]: LoRA fine-tune of smollm2-135m-instruct on {folder}")
    validation = load_dataset(folder / "validation.jsonl", min_examples=1)[:DEMO_VAL_EXAMPLES]
    result = tunery.train(demo_config(folder, max_steps or DEMO_STEPS), val_conversations=validation)
    console.print(f"comparing base and tuned on the first {DEMO_TEST_EXAMPLES} test tickets ...")
    summary = compare_models(["smollm2-135m-instruct", str(result.run_dir)], folder / "test.jsonl",
                             result.run_dir / "eval", limit=DEMO_TEST_EXAMPLES, max_new_tokens=80,
                             json_fields=DEMO_FIELDS, dtype="fp32", gates=["no-regression"])
    before = [row["prediction"].strip() for row in summary.models[0].rows]
    after = [row["prediction"].strip() for row in summary.models[1].rows]
    for index, row in enumerate(summary.models[0].rows[:num_examples]):
        table = Table(title=f"test ticket {index + 1}", show_lines=True, width=console.width)
        table.add_column("", style="bold")
        table.add_column("text", overflow="fold")
        table.add_row("ticket", row["messages"][-1]["content"])
        table.add_row("expected", row["reference"])
        table.add_row("before", before[index] or "(empty)")
        table.add_row("after", after[index] or "(empty)")
        console.print(table)
    m = result.metrics
    count = len(before)
    console.print(f"validation loss: {m.get('initial_val_loss')} → {m.get('val_loss')}   "
                  f"valid triage JSON: {sum(map(is_triage_json, before))}/{count} → "
                  f"{sum(map(is_triage_json, after))}/{count}   adapter: {result.adapter_path}", highlight=False)
    for line in summary.headline_lines():
        console.print(line, highlight=False)
    console.print(f"report: {summary.report_path}", highlight=False)
    return {"run_dir": str(result.run_dir), "before": before, "after": after, "metrics": m,
            "report": summary.report_path, "passed": summary.passed}


@app.command("demo")
@handle_errors
def demo_command(
    max_steps: int = typer.Option(None, "--max-steps", help="Stop training after this many steps (default: the demo's own)."),
    examples: int = typer.Option(3, "--examples", help="Test tickets to answer before and after."),
):
    """LoRA fine-tune of the default model on examples/helpdesk, then test tickets answered before and after."""
    run_demo(max_steps=max_steps, num_examples=examples, console=cli_console)
