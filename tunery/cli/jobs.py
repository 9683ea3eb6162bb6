"""`tunery files ...`, `tunery jobs ...` and `tunery worker`: the platform from the terminal.

Files and jobs commands talk to a tunery server when TUNERY_URL (and TUNERY_API_KEY) is set, else
to the local store directly; `tunery worker` always works on the store (TUNERY_DATABASE_URL).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer
from rich.table import Table

from tunery.cli import app
from tunery.cli.output import console, err_console, handle_errors, print_json
from tunery.config import apply_override
from tunery.errors import ConfigError, TuneryError
from tunery.platform.client import open_platform
from tunery.platform.webhooks import WebhookSender
from tunery.platform.worker import Worker, WorkerSettings
from tunery.store import open_store

files_app = typer.Typer(help="Upload and manage training files (local store, or TUNERY_URL).", no_args_is_help=True)
jobs_app = typer.Typer(help="Create and follow fine-tuning jobs (local store, or TUNERY_URL).", no_args_is_help=True)
app.add_typer(files_app, name="files")
app.add_typer(jobs_app, name="jobs")
FINISHED = ("succeeded", "failed", "cancelled")


def _platform():
    return open_platform()


@files_app.command("upload")
@handle_errors
def files_upload(path: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL training file."),
                 json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Upload a file; it is checked like `tunery data check` (problems name the line and field)."""
    file = _platform().upload(path)
    if json_output:
        return print_json(file)
    console.print(f"{file['id']}  {file['filename']}  {file['bytes']} bytes  {file['status']}", highlight=False)
    if file["status_details"]:
        console.print(file["status_details"], highlight=False, markup=False)
        raise typer.Exit(1)


@files_app.command("list")
@handle_errors
def files_list(json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List your files, newest first."""
    files = _platform().list_files()
    if json_output:
        return print_json(files)
    table = _table("filename", "bytes", "purpose", "status", "created")
    for f in files:
        table.add_row(f["id"], f["filename"], str(f["bytes"]), f["purpose"], f["status"], _when(f["created_at"]))
    console.print(table)


@files_app.command("show")
@handle_errors
def files_show(file_id: str = typer.Argument(..., help="A file id (file-...).")):
    """Print a file object, with its validation details."""
    print_json(_platform().get_file(file_id))


@files_app.command("rm")
@handle_errors
def files_rm(file_id: str = typer.Argument(..., help="A file id (file-...).")):
    """Delete a file."""
    _platform().delete_file(file_id)
    console.print(f"deleted {file_id}")


@jobs_app.command("create")
@handle_errors
def jobs_create(
    training_file: str = typer.Argument(..., help="A JSONL file to upload, or the id of an uploaded file."),
    model: str = typer.Option(..., "--model", help="Base model to fine-tune."),
    suffix: str | None = typer.Option(None, "--suffix", help="Up to 64 letters, digits, - or _ in the model name."),
    validation_file: str | None = typer.Option(None, "--validation-file", help="A file or file id to validate on."),
    seed: int | None = typer.Option(None, "--seed", help="Seed for a reproducible run."),
    n_epochs: str = typer.Option("auto", "--n-epochs", help="Epochs, or auto."),
    overrides: list[str] = typer.Option([], "--set", help="tunery config KEY=VALUE (repeatable), e.g. "
                                        "--set method=qlora --set lora.rank=8."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Queue a fine-tuning job; a worker (`tunery worker`, or `tunery serve`) runs it."""
    epochs = _epochs(n_epochs)  # checked before anything is uploaded
    platform = _platform()
    tunery: dict = {}
    for item in overrides:
        apply_override(tunery, item)
    uploaded: list[str] = []
    try:
        body = {"model": model, "training_file": _file_id(platform, training_file, uploaded), "suffix": suffix,
                "seed": seed, "tunery": tunery}
        if validation_file:
            body["validation_file"] = _file_id(platform, validation_file, uploaded)
        if epochs is not None:
            body["method"] = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}}
        job = platform.create_job({k: v for k, v in body.items() if v is not None})
    except BaseException:
        _remove_uploads(platform, uploaded)
        raise
    if json_output:
        return print_json(job)
    console.print(f"{job['id']} {job['status']}; follow it with `tunery jobs events {job['id']} --follow`",
                  highlight=False)


def _epochs(text: str) -> int | None:
    if text.strip() == "auto":
        return None
    if not text.strip().isdigit() or not 1 <= int(text) <= 50:
        raise ConfigError(f"--n-epochs {text!r} is not a number of epochs", hint="write auto or a whole number 1-50")
    return int(text)


def _file_id(platform, value: str, uploaded: list[str]) -> str:
    """`value` as a file id: an id as given, or a path uploaded now (its id added to `uploaded`)."""
    if value.startswith("file-") and not Path(value).exists():
        return value
    file = platform.upload(Path(value))
    uploaded.append(file["id"])
    err_console.print(f"uploaded {value} as {file['id']} ({file['status']})", highlight=False)
    return file["id"]


def _remove_uploads(platform, file_ids: list[str]) -> None:
    """Delete the files this command uploaded for a job that was not created (files given by id stay)."""
    for file_id in file_ids:
        try:
            platform.delete_file(file_id)
        except TuneryError as exc:
            err_console.print(f"could not remove the upload {file_id}: {exc}; `tunery files rm {file_id}` "
                              "removes it", highlight=False)
        else:
            err_console.print(f"removed the upload {file_id}: no job was created", highlight=False)


@jobs_app.command("list")
@handle_errors
def jobs_list(limit: int = typer.Option(20, "--limit", help="Most jobs to show."),
              after: str | None = typer.Option(None, "--after", help="Show jobs older than this job id."),
              json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List your jobs, newest first."""
    page = _platform().list_jobs(after=after, limit=limit)
    if json_output:
        return print_json(page)
    table = _table("model", "status", "progress", "fine_tuned_model", "created")
    for job in page["data"]:
        table.add_row(job["id"], job["model"], job["status"], _progress(job), job["fine_tuned_model"] or "",
                      _when(job["created_at"]))
    console.print(table)
    if page["has_more"]:
        console.print(f"more: --after {page['data'][-1]['id']}")


@jobs_app.command("show")
@handle_errors
def jobs_show(job_id: str = typer.Argument(..., help="A job id (ftjob-...).")):
    """Print a job object."""
    print_json(_platform().get_job(job_id))


def _act(action: str, job_id: str) -> None:
    job = _platform().act(job_id, action)
    console.print(f"{job['id']} {job['status']}" + (" (stopping after the current step)"
                                                     if job["status"] == "running" else ""), highlight=False)


@jobs_app.command("cancel")
@handle_errors
def jobs_cancel(job_id: str = typer.Argument(..., help="A job id.")):
    """Cancel a job; a running one stops after its current step and keeps its checkpoint."""
    _act("cancel", job_id)


@jobs_app.command("pause")
@handle_errors
def jobs_pause(job_id: str = typer.Argument(..., help="A job id.")):
    """Pause a job after its current step; `tunery jobs resume` continues it from that checkpoint."""
    _act("pause", job_id)


@jobs_app.command("resume")
@handle_errors
def jobs_resume(job_id: str = typer.Argument(..., help="A job id.")):
    """Queue a paused job again; it continues from its last checkpoint."""
    _act("resume", job_id)


@jobs_app.command("events")
@handle_errors
def jobs_events(job_id: str = typer.Argument(..., help="A job id."),
                follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job ends, "
                                            "with a live progress line."),
                interval_s: float = typer.Option(1.0, "--interval", min=0.1, max=3600,
                                                 help="Seconds between polls with --follow (0.1-3600).")):
    """Print a job's events, oldest first."""
    platform, seen = _platform(), set()
    while True:
        fresh = [e for e in reversed(platform.events(job_id)) if e["id"] not in seen]
        for event in fresh:
            seen.add(event["id"])
            console.print(f"{_when(event['created_at'])}  {event['message']}", highlight=False, markup=False)
        if not follow:
            return
        job = platform.get_job(job_id)
        if job["status"] in FINISHED or job["status"] == "paused":
            console.print(f"{job['id']} {job['status']}" + (f": {job['fine_tuned_model']}"
                                                            if job["fine_tuned_model"] else ""), highlight=False)
            if job["status"] == "failed":
                raise typer.Exit(1)
            return
        with console.status(f"{job['status']} {_progress(job)}"):
            time.sleep(interval_s)


@app.command("worker")
@handle_errors
def worker_command(
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", min=1, max=64, help="Processes per job (torchrun when > 1)."),
    lease_s: float = typer.Option(30.0, "--lease-s", min=2.0, max=86400, help="A job whose worker is silent this long is "
                                  "queued again."),
    poll_s: float = typer.Option(0.5, "--poll-s", min=0.05, max=3600, help="Seconds between looks at an empty queue."),
    webhook: str | None = typer.Option(None, "--webhook", help="POST signed job outcomes to this URL."),
    webhook_secret: str | None = typer.Option(None, "--webhook-secret", envvar="TUNERY_WEBHOOK_SECRET",
                                              help="HMAC secret for --webhook (whsec_... or any string)."),
):
    """Run queued fine-tuning jobs from the store (TUNERY_DATABASE_URL, else TUNERY_HOME), one at a time."""
    senders = _webhook_sender(webhook, webhook_secret)
    worker = Worker(open_store(), WorkerSettings(lease_s=lease_s, heartbeat_s=min(2.0, lease_s / 4), poll_s=poll_s,
                                                 nproc_per_node=nproc_per_node), webhooks=senders)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stopping.set())
    err_console.print(f"worker {worker.id} waiting for jobs", highlight=False)
    worker.run_forever()


def _webhook_sender(url: str | None, secret: str | None):
    if not url:
        return None

    if not secret:
        raise ConfigError("--webhook needs a secret to sign with", hint="set --webhook-secret or TUNERY_WEBHOOK_SECRET")
    return WebhookSender(url, secret)


def _table(*columns: str) -> Table:
    table = Table()
    table.add_column("id", no_wrap=True)  # ids are copied into the next command whole
    for column in columns:
        table.add_column(column)
    return table


def _progress(job: dict) -> str:
    extra = job.get("tunery") or {}
    if extra.get("step") and extra.get("total_steps"):
        return f"step {extra['step']}/{extra['total_steps']}"
    return ""


def _when(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else ""
