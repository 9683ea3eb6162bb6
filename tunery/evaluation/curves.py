"""Training and validation loss curves read from a run's `metrics.jsonl`.

Lenient by design: a line that is not JSON, or an event without a step, is skipped, because a
report must still render for a run that was killed mid-write.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

TRAIN_KEYS = ("loss", "train_loss")
VAL_KEYS = ("val_loss", "eval_loss", "validation_loss")


def read_loss_curves(run_dir: Path | str) -> dict[str, list[list[float]]]:
    """`{"train": [[step, loss], ...], "val": [[step, loss], ...]}` (missing file: empty lists)."""
    path = Path(run_dir) / "metrics.jsonl"
    curves: dict[str, list[list[float]]] = {"train": [], "val": []}
    if not path.is_file():
        return curves
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or not isinstance(event.get("step"), (int, float)):
            continue
        step = float(event["step"])
        kind = str(event.get("event") or event.get("type") or event.get("split") or "")
        val_value = first_number(event, VAL_KEYS)
        if val_value is None and kind in {"val", "eval", "validation"}:
            val_value = first_number(event, TRAIN_KEYS)
        if val_value is not None:
            curves["val"].append([step, val_value])
            continue
        train_value = first_number(event, TRAIN_KEYS)
        if train_value is not None:
            curves["train"].append([step, train_value])
    return curves


def first_number(event: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = event.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None
