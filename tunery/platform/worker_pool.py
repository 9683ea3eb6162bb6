"""`tunery serve --workers N --loop NAME`: N `tunery worker` processes and a `tunery loop watch NAME`
per looped model beside the API, stopped with it.

Each is a separate process (its own torch, its own crash), started with the server's environment
(TUNERY_HOME, TUNERY_DATABASE_URL) so API and workers share one store.
"""

from __future__ import annotations

import os
import subprocess
import sys


def start_workers(count: int, *, database: str | None = None, extra_args: list[str] | None = None
                  ) -> list[subprocess.Popen]:
    env = dict(os.environ)
    if database:
        env["TUNERY_DATABASE_URL"] = str(database)
    command = [sys.executable, "-m", "tunery", "worker", *(extra_args or [])]
    return [subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL) for _ in range(count)]


def start_loop_watchers(names: list[str], watch_args: list[str], *, database: str | None = None
                        ) -> list[subprocess.Popen]:
    """One `tunery loop watch NAME ...` per name: its candidates train on the queue the workers serve."""
    env = dict(os.environ)
    if database:
        env["TUNERY_DATABASE_URL"] = str(database)
    return [subprocess.Popen([sys.executable, "-m", "tunery", "loop", "watch", name, *watch_args], env=env,
                             stdin=subprocess.DEVNULL) for name in names]


def stop_workers(workers: list[subprocess.Popen], timeout_s: float = 60.0) -> None:
    """SIGTERM: each running job stops after its step, keeps its checkpoint and goes back to the queue
    (a loop watcher cancels the candidate job it was waiting for, and releases its lease)."""
    for process in workers:
        if process.poll() is None:
            process.terminate()
    for process in workers:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
