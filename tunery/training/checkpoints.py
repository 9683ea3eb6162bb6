"""Atomic checkpoints: safetensors for tensors, JSON for state, a sha256 manifest written last.

A checkpoint is written into `checkpoints/.tmp-step-N`, every file fsynced, the manifest written
last, then the folder is renamed to `step-N`. A folder without a matching manifest is never used.
Nothing here is pickled and nothing here knows about models: it stores named tensors and a dict.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tunery.errors import CheckpointError
from tunery.safeio import apply_umask

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"


@dataclass
class Checkpoint:
    """A verified checkpoint on disk."""

    path: Path
    step: int

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / f"{name}.safetensors"))

    def state(self) -> dict:
        return json.loads((self.path / "state.json").read_text(encoding="utf-8"))


def save_checkpoint(checkpoints_dir: Path, step: int, tensor_groups: dict[str, dict[str, torch.Tensor]],
                    state: dict) -> Path:
    """Write tensors (one safetensors file per group) and state.json atomically as `step-N`."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / f"step-{step}"
    tmp = checkpoints_dir / f"{TMP_PREFIX}step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, tensors in tensor_groups.items():
            write_file_synced(tmp / f"{name}.safetensors", lambda p, t=tensors: save_file(_contiguous(t), str(p)))
        write_file_synced(tmp / "state.json", lambda p: p.write_text(json.dumps(state, indent=1), encoding="utf-8"))
        manifest = {"step": step, "files": {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}}
        write_file_synced(tmp / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))
        apply_umask(tmp)  # safetensors writes 0600; the checkpoint reads like the rest of the run
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(checkpoints_dir)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {final}: {getattr(exc, 'strerror', None) or exc}", code="checkpoint_write_failed",
            hint="free disk space; earlier checkpoints are intact and `tunery train --resume` continues from them",
        ) from None
    return final


def write_file_synced(path: Path, write) -> None:
    """Run `write(path)` then fsync the file, so the rename that follows publishes complete data."""
    write(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checkpoint(path: Path) -> str | None:
    """None when every file matches the manifest; otherwise why the checkpoint is unusable."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json (the write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    present = {f.name for f in path.iterdir()} - {MANIFEST}
    if present != set(files):
        return f"files differ from the manifest (extra {sorted(present - set(files))}, missing {sorted(set(files) - present)})"
    for name, expected in files.items():
        if file_sha256(path / name) != expected:
            return f"{name} does not match its sha256 in manifest.json"
    return None


def list_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every `step-N` folder, oldest first (verified or not)."""
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        if path.is_dir() and path.name.startswith("step-") and path.name[5:].isdigit():
            found.append((int(path.name[5:]), path))
    return sorted(found)


def clean_partial_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Delete `.tmp-*` folders left by a write that was killed; returns what was removed."""
    removed = []
    if checkpoints_dir.is_dir():
        for path in checkpoints_dir.iterdir():
            if path.name.startswith(TMP_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def latest_valid_checkpoint(checkpoints_dir: Path, warn=None) -> Checkpoint | None:
    """The newest checkpoint whose files match its manifest; broken ones are reported and skipped."""
    for step, path in reversed(list_checkpoints(checkpoints_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            return Checkpoint(path=path, step=step)
        if warn:
            warn(f"checkpoint {path.name} refused: {problem}; trying the previous one")
    return None


def prune_checkpoints(checkpoints_dir: Path, keep_last: int, keep_step: int | None = None) -> None:
    """Keep the newest `keep_last` checkpoints and the one at `keep_step` (the best)."""
    found = list_checkpoints(checkpoints_dir)
    keep = {step for step, _ in found[-keep_last:]}
    if keep_step is not None:
        keep.add(keep_step)
    for step, path in found:
        if step not in keep:
            shutil.rmtree(path, ignore_errors=True)
