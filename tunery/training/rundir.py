"""The run directory contract: config.yaml, run.json, metrics.jsonl, checkpoints/, adapter/ or model/.

Writes are whole-file replacements (temp file + rename) so a reader never sees half a run.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from tunery.errors import TrainingError


class RunDir:
    """Paths and writers for one run directory."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def run_json_path(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def read_run_json(self) -> dict:
        try:
            return json.loads(self.run_json_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def update_run_json(self, **fields) -> dict:
        info = self.read_run_json()
        info.update(fields)
        info["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_text_atomic(self.run_json_path, json.dumps(info, indent=2, default=str) + "\n")
        return info

    def append_metric(self, event: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(event, default=str) + "\n")

    def drop_metrics_after(self, step: int) -> None:
        """On resume, forget events of steps that will run again (they were after the checkpoint)."""
        if not self.metrics_path.is_file():
            return
        kept = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            if int(event.get("step", 0)) <= step:
                kept.append(line)
        write_text_atomic(self.metrics_path, "".join(k + "\n" for k in kept))

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def publish_folder(write, target: Path) -> None:
    """Call `write(tmp_folder)` then move it to `target`, so a half-written export never appears."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    from safetensors import SafetensorError

    try:
        write(tmp)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainingError(f"could not write {target}: {getattr(exc, 'strerror', None) or exc}", code="export_write_failed",
                            hint="free disk space and run `tunery train --resume` to write it again") from None
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
