"""The run lock: one process at a time writes a run directory, through `run.lock` (pid, host, start time).

The lock file is created atomically (O_EXCL). A lock whose process is gone from this host is stale
and taken over; one held by a live process, or by any process on another host, is an error naming
its holder. Readers (export, evaluation, serving) never take it. Knows nothing about training.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

from tunery import host
from tunery.errors import ConfigError, TrainingError
from tunery.training.rundir import LOCK_FILE

_held: set[Path] = set()  # run directories this process holds (two threads must not share one)
_held_guard = threading.Lock()
_FRESH_S = 10.0  # an unreadable lock younger than this is being written by its taker


class RunLock:
    """`with RunLock(run_dir):` holds the run directory's lock; the folder is created if missing."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).expanduser().resolve()
        self.path = self.run_dir / LOCK_FILE
        self.token: str | None = None
        self.created_dir = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; `run_locked` naming the holder when it is held."""
        self.created_dir = not self.run_dir.exists()
        if not self.created_dir and not self.run_dir.is_dir():
            raise ConfigError(f"run directory {self.run_dir} is a file, not a folder", code="output_dir_not_folder",
                              hint="set output_dir to a new or empty folder")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                holder = read_lock(self.run_dir)
                if not is_stale(holder, self.path):
                    raise locked_error(self.run_dir, holder) from None
                break_stale(self.path, holder)
                continue
            self.token = secrets.token_hex(8)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(lock_record(self.token), handle)
                handle.flush()
                os.fsync(handle.fileno())
            with _held_guard:
                _held.add(self.run_dir)
            return self
        raise TrainingError(f"could not take the lock of run {self.run_dir}", code="run_locked",
                            hint=f"another process keeps taking it; check {self.path}")

    def release(self) -> None:
        """Remove the lock if it is still ours; an empty folder this lock created goes too."""
        if self.token is None:
            return
        holder = read_lock(self.run_dir)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        with _held_guard:
            _held.discard(self.run_dir)
        self.token = None
        if self.created_dir:
            try:
                self.run_dir.rmdir()  # only when nothing was written: a run refused in preflight
            except OSError:
                pass


def lock_record(token: str) -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
            time.gmtime()), "process_start": host.process_start_ticks(os.getpid()), "token": token,
            "command": " ".join(sys.argv)[:300]}


def read_lock(run_dir: str | Path) -> dict | None:
    """The lock's record, or None when there is no lock or it cannot be read."""
    return _read_json(Path(run_dir) / LOCK_FILE)


def lock_holder(run_dir: str | Path) -> dict | None:
    """The live holder's record, or None when the run is free (no lock, or a stale one)."""
    path = Path(run_dir).expanduser().resolve() / LOCK_FILE
    if not path.exists():
        return None
    holder = read_lock(path.parent)
    return None if is_stale(holder, path) else (holder or {})


def is_stale(holder: dict | None, path: Path) -> bool:
    """True when the lock's process is gone: same host and its pid dead or reused. Unknown hosts hold."""
    if holder is None:  # unreadable: a taker between create and write, or a write cut short long ago
        try:
            return time.time() - path.stat().st_mtime > _FRESH_S
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    if pid == os.getpid():
        with _held_guard:
            return path.parent not in _held  # left by an earlier run of this process that did not release
    if not host.process_alive(pid):
        return True
    started, now = holder.get("process_start"), host.process_start_ticks(pid)
    return started is not None and now is not None and started != now  # the pid went to a new process


def break_stale(path: Path, holder: dict | None) -> None:
    """Move a stale lock aside, putting it back if a live taker replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = _read_json(aside)
    if holder is not None and moved is not None and moved.get("token") != holder.get("token"):
        try:
            os.link(aside, path)  # a fresh lock taken between our read and the rename: restore it
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def _read_json(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def locked_error(run_dir: Path, holder: dict | None) -> TrainingError:
    holder = holder or {}
    who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        who = "this process"
    since = f" since {holder['started_at']}" if holder.get("started_at") else ""
    return TrainingError(f"run {run_dir} is being written by {who}{since}", code="run_locked",
                         hint=f"wait for that run to finish or stop it; if the process is gone (another machine), "
                              f"delete {run_dir / LOCK_FILE}")
