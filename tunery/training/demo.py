"""`tunery demo`: LoRA-tune the default model on examples/helpdesk and show tickets before and after.

Sized for a 2-core laptop CPU (about ten minutes): a fixed number of steps over the training split,
validation loss before and after, and a few test tickets answered greedily by both models.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from tunery.config import TrainConfig
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


def load_test_tickets(folder: Path, count: int) -> list[dict]:
    tickets = []
    for line in (folder / "test.jsonl").read_text(encoding="utf-8").splitlines()[:count]:
        messages = json.loads(line)["messages"]
        tickets.append({"prompt": [m for m in messages if m["role"] != "assistant"],
                        "expected": next(m["content"] for m in messages if m["role"] == "assistant")})
    return tickets


def answer_tickets(model_ref: str, tickets: list[dict]) -> list[str]:
    import torch

    from tunery.evaluation.generation import generate_texts
    from tunery.models import load_model

    model, tokenizer = load_model(model_ref, dtype="fp32", device="cpu")
    with torch.no_grad():
        generations = generate_texts(model, tokenizer, [t["prompt"] for t in tickets], max_new_tokens=80)
    return [g.text.strip() for g in generations]


def is_triage_json(text: str) -> bool:
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and set(value) == {"category", "priority", "team", "summary"}


def run_demo(*, max_steps: int | None = None, num_examples: int = 3, console: Console | None = None) -> dict:
    import tunery
    from tunery.training.setup import quiet_libraries, set_threads

    console = console or Console()
    quiet_libraries()
    set_threads(None)  # generation before training runs on the same thread budget as training
    folder = find_helpdesk_dir()
    tickets = load_test_tickets(folder, num_examples)
    console.print(f"[bold]tunery demo[/]: LoRA fine-tune of smollm2-135m-instruct on {folder}")
    console.print("answering test tickets with the base model ...")
    before = answer_tickets("smollm2-135m-instruct", tickets)
    from tunery.data.dataset import load_dataset

    validation = load_dataset(folder / "validation.jsonl", min_examples=1)[:DEMO_VAL_EXAMPLES]
    result = tunery.train(demo_config(folder, max_steps or DEMO_STEPS), val_conversations=validation)
    after = answer_tickets(str(result.run_dir), tickets)
    for index, ticket in enumerate(tickets):
        table = Table(title=f"test ticket {index + 1}", show_lines=True, width=console.width)
        table.add_column("", style="bold")
        table.add_column("text", overflow="fold")
        table.add_row("ticket", ticket["prompt"][-1]["content"])
        table.add_row("expected", ticket["expected"])
        table.add_row("before", before[index] or "(empty)")
        table.add_row("after", after[index] or "(empty)")
        console.print(table)
    m = result.metrics
    valid_before = sum(map(is_triage_json, before))
    valid_after = sum(map(is_triage_json, after))
    console.print(f"validation loss: {m.get('initial_val_loss')} → {m.get('val_loss')}   "
                  f"valid triage JSON: {valid_before}/{len(tickets)} → {valid_after}/{len(tickets)}   "
                  f"adapter: {result.adapter_path}", highlight=False)
    return {"run_dir": str(result.run_dir), "before": before, "after": after, "metrics": m}
