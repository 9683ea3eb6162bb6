"""The worker: claims queued jobs from the store one at a time and runs each as `tunery train` in a
child process (under torchrun with --nproc-per-node), with a heartbeat that holds its lease.

A job whose worker died is queued again by the next worker to claim (its lease ran out) and
continues with `tunery train --resume` from its last checkpoint, exactly as an uninterrupted run
would. Cancel and pause reach the run as SIGTERM: it finishes the current step, writes a
checkpoint and stops. The child dies with its worker (PR_SET_PDEATHSIG on Linux), so a killed
worker never leaves a run behind that would race the next attempt.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tunery.config import dump_config
from tunery.errors import StoreError, TuneryError
from tunery.models.resolve import resolve_model
from tunery.paths import tunery_home
from tunery.platform import jobs as job_service
from tunery.platform.files import blob_path, save_result_file
from tunery.platform.job_spec import build_config
from tunery.platform.registry import register_run
from tunery.platform.run_follow import (
    RunFollower,
    checkpoint_metrics,
    describe,
    metrics_csv,
    read_run_json,
    should_report,
)
from tunery.platform.webhooks import WebhookSender
from tunery.safeio import open_private
from tunery.store import files as file_rows
from tunery.store import job_history
from tunery.store import jobs as job_rows
from tunery.store.db import Store
from tunery.store.owners import Actor
from tunery.training.auto import auto_learning_rate
from tunery.training.resources import count_model_parameters
from tunery.training.runlock import lock_holder

log = logging.getLogger("tunery.worker")
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class WorkerSettings:
    lease_s: float = 30.0  # a job whose worker is silent this long is queued again
    heartbeat_s: float = 1.0
    poll_s: float = 0.5
    nproc_per_node: int = 1
    python: str = sys.executable


class Worker:
    def __init__(self, store: Store, settings: WorkerSettings = WorkerSettings(), *,
                 webhooks: WebhookSender | None = None, worker_id: str | None = None):
        self.store, self.settings, self.webhooks = store, settings, webhooks
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.stopping = threading.Event()
        job_rows.register_worker(store, self.id, socket.gethostname(), os.getpid())

    def run_forever(self) -> None:
        """Claim and run jobs until `stopping` is set (SIGTERM/SIGINT in `tunery worker`)."""
        log.info("worker %s waiting for jobs", self.id)
        while not self.stopping.is_set():
            try:
                ran = self.run_one()
            except StoreError as exc:  # the database is away: wait and try again
                log.warning("worker %s: %s", self.id, exc.message)
                ran = False
            if not ran:
                self.stopping.wait(self.settings.poll_s)

    def run_one(self) -> bool:
        """Claim one job and run it to its end; False when the queue was empty."""
        row = job_rows.claim_job(self.store, self.id, self.settings.lease_s)
        if row is None:
            return False
        log.info("worker %s runs %s (attempt %d)", self.id, row["id"], row["attempts"])
        try:
            JobRun(self, row).run()
        except StoreError:
            raise
        except Exception as exc:  # a bug or a full disk in the worker itself: the job fails, the worker lives
            log.exception("worker %s: job %s failed in the worker", self.id, row["id"])
            self._finish(row, "failed", f"The worker failed: {type(exc).__name__}",
                         error={"code": "worker_error", "message": f"{type(exc).__name__}: {exc}"[:500],
                                "param": None})
        return True

    def _finish(self, row: dict, status: str, message: str, *, error: dict | None = None, **fields) -> None:
        if error is not None:
            fields["error_json"] = json.dumps(error)
        level = "error" if status == "failed" else "info"
        if job_rows.finish_job(self.store, row["id"], self.id, status, event=message, level=level, **fields):
            if self.webhooks is not None and status in ("succeeded", "failed", "cancelled"):
                job = job_rows.get_job(self.store, Actor(None, admin=True), row["id"])
                self.webhooks.send(f"fine_tuning.job.{status}", {"id": row["id"], "status": status,
                                                                 "fine_tuned_model": job["fine_tuned_model"]})


class JobRun:
    """One attempt at one job: write its config, start the run, follow it, record the outcome."""

    def __init__(self, worker: Worker, row: dict):
        self.worker, self.row, self.store = worker, row, worker.store
        self.run_dir = Path(row["run_dir"])
        self.follower = RunFollower(self.run_dir, reported_step=row["step"] or 0)
        self.stop_sent: str | None = None

    def run(self) -> None:
        if read_run_json(self.run_dir).get("status") == "completed":  # finished before its worker died
            return self.succeed()
        if not self.wait_for_run_lock():
            return  # the lease was lost while waiting
        command = self.command()
        log_path = jobs_dir() / f"{self.row['id']}.log"
        resumed = "--resume" in command
        job_rows.update_job(self.store, self.row["id"], event=(
            f"Resuming from the last checkpoint (attempt {self.row['attempts']})" if resumed
            else "Fine-tuning job started"))
        with open_private(log_path, "ab") as log_file:
            child = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=child_env(), preexec_fn=_die_with_parent)
            try:
                following = self.follow(child)
            except BaseException:  # the database stayed away too long: no run may outlive its lease
                child.kill()
                child.wait()
                raise
            if not following:
                return  # the lease was lost: another worker owns the job now
        self.conclude(child.returncode, log_path)

    def wait_for_run_lock(self) -> bool:
        """An earlier attempt's trainer may still be stopping: wait for the run lock, heartbeating.

        Past one lease the run starts anyway and `tunery train` refuses with the holder's pid and
        host, so the job fails with that message rather than two trainers writing one run.
        """
        s = self.worker.settings
        waited_s = 0.0
        while waited_s < s.lease_s and lock_holder(self.run_dir) is not None:
            if job_rows.heartbeat(self.store, self.row["id"], self.worker.id, s.lease_s) is None:
                return False
            self.worker.stopping.wait(s.heartbeat_s)
            waited_s += s.heartbeat_s
        return True

    def command(self) -> list[str]:
        s = self.worker.settings
        launcher = [s.python, "-m", "tunery"] if s.nproc_per_node <= 1 else \
            [s.python, "-m", "torch.distributed.run", f"--nproc-per-node={s.nproc_per_node}", "-m", "tunery"]
        if (self.run_dir / "config.yaml").is_file():
            return [*launcher, "train", "--resume", str(self.run_dir), "--json-logs"]
        config_path = jobs_dir() / f"{self.row['id']}.yaml"
        config_path.write_text(dump_config(self.config()), encoding="utf-8")
        return [*launcher, "train", str(config_path), "--json-logs"]

    def config(self):
        request, base_ref = job_service.request_of(self.row)
        owner = Actor(self.row["owner"], admin=True)
        train = file_rows.get_file(self.store, owner, self.row["training_file"])
        valid = file_rows.get_file(self.store, owner, self.row["validation_file"]) if self.row["validation_file"] else None
        learning_rate = scaled_learning_rate(request, base_ref)
        return build_config(request, job_id=self.row["id"], base_ref=base_ref, train_path=blob_path(train["sha256"]),
                            validation_path=blob_path(valid["sha256"]) if valid else None, run_dir=self.run_dir,
                            learning_rate=learning_rate, init_from=job_service.init_from_of(self.row))

    def follow(self, child: subprocess.Popen) -> bool:
        """Heartbeat, report progress and pass on stop requests until the child exits; False if the lease was lost."""
        s = self.worker.settings
        while True:
            done = child.poll() is not None
            self.report_progress()
            total = self.follower.last.get("total_steps") or self.row["total_steps"]
            current = job_rows.heartbeat(self.store, self.row["id"], self.worker.id, s.lease_s,
                                         step=self.follower.last.get("step", self.row["step"]), total_steps=total,
                                         trained_tokens=self.follower.train_tokens or self.row["trained_tokens"],
                                         estimated_finish=self.follower.estimated_finish(total))
            if current is None:
                log.warning("worker %s lost job %s; stopping its run", self.worker.id, self.row["id"])
                child.kill()
                child.wait()
                return False
            wanted = current["stop_request"] or ("requeue" if self.worker.stopping.is_set() else None)
            if wanted and not self.stop_sent and not done:
                self.stop_sent = wanted  # the run finishes its step, writes a checkpoint and exits
                child.send_signal(signal.SIGTERM)
            if done:
                self.row = current
                return True
            try:
                child.wait(timeout=s.heartbeat_s)
            except subprocess.TimeoutExpired:
                pass

    def report_progress(self) -> None:
        total = self.row["total_steps"]
        for event in self.follower.new_metrics():
            total = event.get("total_steps") or total
            if should_report(event, total):
                data = {k: event[k] for k in ("step", "loss", "val_loss", "tokens_per_s", "lr") if k in event}
                job_rows.update_job(self.store, self.row["id"], event=describe(event), event_data=data)
        for step in self.follower.new_checkpoints():
            if job_history.add_checkpoint(self.store, self.row["id"], step, checkpoint_metrics(self.run_dir, step)):
                job_rows.update_job(self.store, self.row["id"], event=f"Checkpoint saved at step {step}")

    def conclude(self, returncode: int, log_path: Path) -> None:
        info = read_run_json(self.run_dir)
        status = info.get("status")
        if status == "completed" and returncode == 0:
            return self.succeed()
        if self.stop_sent == "requeue" and status == "interrupted":
            return self.worker._finish(self.row, "queued", f"Worker {self.worker.id} stopped; the job is queued "
                                       f"again and resumes from its checkpoint (step {info.get('steps', 0)})")
        if self.stop_sent and status == "interrupted":
            target = "cancelled" if self.stop_sent == "cancel" else "paused"
            step = info.get("steps", 0)
            return self.worker._finish(self.row, target, f"Job {target} at step {step}; its checkpoint is kept")
        error = info.get("error") or {}
        message = error.get("message") or last_error(log_path) or f"the training run exited with code {returncode}"
        code = error.get("code") or error_code(log_path) or "training_failed"
        message = self.readable(message)
        self.worker._finish(self.row, "failed", f"Fine-tuning job failed: {message.splitlines()[0]}",
                            error={"code": code, "message": message, "param": "training_file"
                                   if code.startswith(("invalid_dataset", "data", "too_few")) else None})

    def succeed(self) -> None:
        owner = Actor(self.row["owner"])
        result = save_result_file(self.store, owner, f"{self.row['id']}-metrics.csv", metrics_csv(self.run_dir))
        info = read_run_json(self.run_dir)
        tokens = (info.get("metrics") or {}).get("tokens_seen") or self.follower.train_tokens
        self.register_version()  # before the final event, so "successfully completed" stays the newest, as in OpenAI
        self.worker._finish(self.row, "succeeded", "The job has successfully completed",
                            fine_tuned_model=job_service.fine_tuned_name(self.row),
                            result_files_json=json.dumps([result["id"]]), trained_tokens=tokens,
                            estimated_finish=None, step=info.get("steps", self.row["step"]))

    def register_version(self) -> None:
        """A succeeded job with a suffix becomes the next registry version SUFFIX@N (never fails the job)."""
        if not self.row.get("suffix"):
            return
        try:
            version = register_run(self.store, self.run_dir, self.row["suffix"], job_id=self.row["id"],
                                   created_by=self.row["owner"] or "local")
        except TuneryError as exc:
            log.warning("job %s succeeded but was not registered: %s", self.row["id"], exc.message)
            return
        # retrying: the job has succeeded; a dropped connection here must not leave it running
        self.store.retrying(lambda conn: job_rows.add_event(conn, self.row["id"], f"Registered as {version.ref}",
                                                            data={"version": version.ref}))

    def readable(self, message: str) -> str:
        """Blob paths become the uploaded filenames; other paths are not shown to clients."""
        owner = Actor(None, admin=True)
        for column in ("training_file", "validation_file"):
            if self.row[column]:
                file = file_rows.get_file(self.store, owner, self.row[column])
                message = message.replace(str(blob_path(file["sha256"])), file["filename"])
        return re.sub(r"(?<![\w.])/[\w.\-]+(?:/[\w.\-]+)+", "<path>", message)[:4000]


def scaled_learning_rate(request, base_ref: str) -> float | None:
    """OpenAI's learning_rate_multiplier applied to the learning rate the run would otherwise use."""
    multiplier = request.hyper.learning_rate_multiplier
    if multiplier == "auto":
        return None
    configured = (request.tunery.get("train") or {}).get("learning_rate", "auto")
    if configured == "auto":
        num_params, _ = count_model_parameters(resolve_model(base_ref).path)
        configured = auto_learning_rate(request.tunery.get("method", "lora"), num_params)
    return float(f"{float(configured) * multiplier:.4g}")


def jobs_dir() -> Path:
    path = tunery_home() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def child_env() -> dict:
    env = dict(os.environ)
    env["COLUMNS"] = "100000"  # error lines unwrapped in the log
    return env


def last_error(log_path: Path) -> str | None:
    lines = _log_lines(log_path)
    starts = [i for i, line in enumerate(lines) if line.startswith("error (")]
    if not starts:
        return None
    body = [re.sub(r"^error \([\w.-]+\): ", "", lines[starts[-1]])]
    body += [line for line in lines[starts[-1] + 1:] if not line.strip().startswith("hint:")]
    return "\n".join(body).strip()


def error_code(log_path: Path) -> str | None:
    for line in reversed(_log_lines(log_path)):
        match = re.match(r"^error \(([\w.-]+)\)", line)
        if match:
            return match.group(1)
    return None


def _log_lines(log_path: Path) -> list[str]:
    try:
        return log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-200:]
    except OSError:
        return []


def _die_with_parent() -> None:
    """In the child: SIGKILL when the worker dies, so no orphan run outlives its lease."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
