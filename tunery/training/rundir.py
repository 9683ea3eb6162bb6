"""The run directory contract: config.yaml, run.json, metrics.jsonl, checkpoints/, adapter/ or model/.

Writes are whole-file replacements (temp file + rename) so a reader never sees half a run.json.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ConfigError, TrainingError

LOCK_FILE = "run.lock"  # see runlock.py
# What `tunery train` writes at the top of a run directory; nothing else is ever replaced or removed.
RUN_ENTRIES = frozenset({
    "config.yaml", "run.json", "metrics.jsonl", "checkpoints", "adapter", "model", "tensorboard", "run.lock",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
})


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

    def is_run(self) -> bool:
        """True when this folder holds a tunery run (config.yaml and a run.json that says so)."""
        return self.config_path.is_file() and "status" in self.read_run_json()

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


@dataclass
class OutputPlan:
    """What starting a fresh run in a folder does to what is already there."""

    replace: list[str] = field(default_factory=list)  # entries of an earlier run, removed before writing
    kept: list[str] = field(default_factory=list)  # the user's own files, never touched

    def describe(self, path: Path) -> str | None:
        if not self.replace and not self.kept:
            return None
        parts = []
        if self.replace:
            parts.append(f"replacing the earlier run in {path} (removing {_listing(self.replace)})")
        if self.kept:
            parts.append(f"keeping {len(self.kept)} file(s) tunery did not write ({_listing(self.kept)})")
        return "; ".join(parts)

    def apply(self, path: Path) -> None:
        for name in self.replace:
            entry = path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)


def plan_output_dir(path: Path, *, overwrite: bool = False) -> OutputPlan:
    """Check a fresh run may write into `path`: empty or new, or `overwrite` given; never the user's files.

    An earlier run there is replaced only with `overwrite` (its own entries, nothing else); a folder
    of the user's files takes a run beside them only with `overwrite`, and never one that would
    replace a file of theirs (a `metrics.jsonl` or `tokenizer.json` tunery did not write).
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output_dir {path} is a file, not a folder", code="output_dir_not_folder",
                          hint="set output_dir to a new or empty folder")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    entries = [name for name in entries if name != LOCK_FILE]  # held or stale: the run lock decides
    if not entries:
        return OutputPlan()
    run = RunDir(path)
    ours = [name for name in entries if name in RUN_ENTRIES or _is_temp_entry(name)]
    theirs = [name for name in entries if name not in ours]
    if run.is_run() or run.checkpoints_dir.is_dir():
        if not overwrite:
            raise ConfigError(f"output_dir {path} already holds a run", code="run_exists",
                              hint=f"continue it with `tunery train --resume {path}`, start over with --overwrite "
                                   "(replaces only the run's own files), or choose another output_dir")
        return OutputPlan(replace=ours, kept=theirs)
    if not overwrite:
        raise ConfigError(f"output_dir {path} is not empty and holds no tunery run ({_listing(entries)})",
                          code="output_dir_not_empty",
                          hint="choose a new or empty folder, or pass --overwrite to write the run beside "
                               "these files (tunery never deletes or replaces a file it did not write)")
    if ours:
        raise ConfigError(f"output_dir {path} holds files a run would replace ({_listing(ours)})",
                          code="output_dir_conflict",
                          hint="move them away or choose another output_dir: --overwrite replaces only a "
                               "tunery run's own files")
    return OutputPlan(kept=theirs)


def _is_temp_entry(name: str) -> bool:
    """`.run.json.tmp`, `.adapter.tmp`: what an interrupted atomic write of a run entry leaves."""
    return name.startswith(".") and name[1:].split(".tmp")[0] in RUN_ENTRIES


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


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
