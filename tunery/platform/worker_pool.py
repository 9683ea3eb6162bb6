"""`tunery serve --workers N`: N `tunery worker` processes beside the API, stopped with it.

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


def stop_workers(workers: list[subprocess.Popen], timeout_s: float = 60.0) -> None:
    """SIGTERM: each running job stops after its step, keeps its checkpoint and goes back to the queue."""
    for process in workers:
        if process.poll() is None:
            process.terminate()
    for process in workers:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
