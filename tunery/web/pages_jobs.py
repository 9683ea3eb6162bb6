"""Jobs: the list (status, model, elapsed, ETA), a job's page with live loss curves, events,
checkpoints and cancel / pause / resume, and New job (upload, check, pick settings, start).

Every action calls the jobs service behind /v1/fine_tuning/jobs, as the calling key.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from tunery.errors import ConfigError, TuneryError
from tunery.models.builtin import BUILTIN_MODELS
from tunery.platform import jobs
from tunery.platform.files import file_content_path
from tunery.platform.run_follow import read_metrics
from tunery.training.auto import preview_auto
from tunery.web.app import UI, render
from tunery.web.auth import Viewer, posted_viewer, viewer

router = APIRouter()
ACTIVE = ("validating_files", "queued", "running")
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
METHODS = ("lora", "qlora", "full")


def _service():
    return jobs


def timing(job: dict, now: float | None = None) -> dict:
    """Elapsed seconds and the seconds left until the estimated finish, for display."""
    now = now or time.time()
    end = job.get("finished_at") or now
    eta = job.get("estimated_finish")
    return {"elapsed_s": max(0, int(end - job["created_at"])),
            "eta_s": max(0, int(eta - now)) if eta and job["status"] in ACTIVE else None}


def curve(run_dir) -> dict:
    """Train and validation loss by step from the run's metrics.jsonl, as aligned series (null = none)."""
    train, valid = {}, {}
    for event in read_metrics(run_dir):
        step = event.get("step")
        if not isinstance(step, int):
            continue
        if event.get("type") == "train" and event.get("loss") is not None:
            train[step] = event["loss"]
        elif event.get("type") == "val" and event.get("val_loss") is not None:
            valid[step] = event["val_loss"]
    steps = sorted({*train, *valid})
    return {"step": steps, "train_loss": [train.get(s) for s in steps], "valid_loss": [valid.get(s) for s in steps]}


def job_view(request: Request, who: Viewer, job_id: str) -> dict:
    jobs = _service()
    store = request.app.state.tunery.store
    job = jobs.get_job(store, who.caller, job_id)
    events = jobs.list_events(store, who.caller, job_id, limit=200)["data"]
    checkpoints = jobs.list_checkpoints(store, who.caller, job_id, limit=100)["data"]
    from tunery.web.pages_models import version_of_job

    return {"job": job, "events": events, "checkpoints": checkpoints, "timing": timing(job),
            "version": version_of_job(store, job_id),
            "curve": curve(jobs.run_dir_of(job_id)), "live": job["status"] in ACTIVE}


@router.get("/jobs")
def jobs_page(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "jobs.html", who, active="jobs", **_job_rows(request, who))


@router.get("/jobs/rows")
def job_rows(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "_job_rows.html", who, **_job_rows(request, who))


def _job_rows(request: Request, who: Viewer) -> dict:
    listed = _service().list_jobs(request.app.state.tunery.store, who.caller, limit=100)["data"]
    rows = [{"job": job, "timing": timing(job)} for job in listed]
    return {"rows": rows, "any_active": any(r["job"]["status"] in ACTIVE for r in rows)}


@router.get("/jobs/new")
def new_job_page(request: Request, file: str | None = None, who: Viewer = Depends(viewer)):
    return render(request, "new_job.html", who, active="new-job", **job_form_context(request, who, file))


def job_form_context(request: Request, who: Viewer, training_file: str | None = None, **values) -> dict:
    """What the job form offers: the caller's usable files, the base models, methods and `auto` reasons."""
    from tunery.web.pages_datasets import training_files

    state = request.app.state.tunery
    usable = [f for f in training_files(request, who) if f["status"] != "error"]
    chosen = training_file or (usable[0]["id"] if usable else None)
    form = {"training_file": chosen, "model": state.base_name, "method": "lora", "suffix": "", "seed": "",
            "validation_file": "", "tunery_json": "", **{h: "auto" for h in HYPERPARAMETERS}, **values}
    return {"usable_files": usable, "models": sorted({*state.fine_tunable_models(), *_builtin_names()}),
            "methods": METHODS, "form": form, "auto_choices": _auto_choices(request, who, form)}


def _builtin_names() -> list[str]:
    return list(BUILTIN_MODELS)


def _auto_choices(request: Request, who: Viewer, form: dict) -> list:
    """What `auto` would pick for this file on the served base model, with the reasons."""
    state = request.app.state.tunery
    if not form["training_file"] or form["model"] != state.base_name:
        return []
    try:
        _, path = file_content_path(state.store, who.caller, form["training_file"])
        return preview_auto(path, state.tokenizer, state.base_path, method=form["method"])
    except TuneryError:
        return []


def _number_or_auto(value: str, name: str):
    value = (value or "auto").strip()
    if value == "auto":
        return "auto"
    try:
        return int(value) if value.isdigit() else float(value)
    except ValueError:
        raise ConfigError(f"{name} must be 'auto' or a number, got {value!r}") from None


def job_body(form) -> dict:
    """The create body the form describes, exactly as an API client would send it."""
    extra = (form.get("tunery_json") or "").strip()
    try:
        tunery = json.loads(extra) if extra else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"tunery settings: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:  # a number past Python's digit limit
        raise ConfigError(f"tunery settings: not valid JSON ({exc})") from None
    if not isinstance(tunery, dict):
        raise ConfigError("tunery settings must be a JSON object, e.g. {\"lora\": {\"rank\": 8}}")
    tunery.setdefault("method", form.get("method") or "lora")
    hyper = {name: _number_or_auto(form.get(name, "auto"), name) for name in HYPERPARAMETERS}
    body = {"model": form.get("model"), "training_file": form.get("training_file"),
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}}, "tunery": tunery}
    for key in ("validation_file", "suffix"):
        if (form.get(key) or "").strip():
            body[key] = form[key].strip()
    if (form.get("seed") or "").strip():
        body["seed"] = _number_or_auto(form["seed"], "seed")
    return body


@router.post("/jobs")
async def create(request: Request, who: Viewer = Depends(posted_viewer)):
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str) and k != "csrf_token"}
    state = request.app.state.tunery
    try:
        job = _service().create_job(state.store, who.caller, job_body(form), base_models=state.fine_tunable_models())
    except ConfigError as exc:
        context = job_form_context(request, who, **form)
        return render(request, "new_job.html", who, active="new-job", status_code=400,
                      error=exc.message, error_hint=exc.hint, error_param=getattr(exc, "param", None), **context)
    return RedirectResponse(f"{UI}/jobs/{job['id']}", status_code=303)


@router.get("/jobs/{job_id}")
def job_page(job_id: str, request: Request, who: Viewer = Depends(viewer)):
    view = job_view(request, who, job_id)
    return render(request, "job.html", who, active="jobs", **view)


@router.get("/jobs/{job_id}/live")
def job_live(job_id: str, request: Request, who: Viewer = Depends(viewer)):
    return render(request, "_job_live.html", who, **job_view(request, who, job_id))


@router.post("/jobs/{job_id}/{action}")
def job_action(job_id: str, action: str, request: Request, who: Viewer = Depends(posted_viewer)):
    jobs = _service()
    act = {"cancel": jobs.cancel_job, "pause": jobs.pause_job, "resume": jobs.resume_job}.get(action)
    if act is None:
        raise ConfigError(f"unknown job action {action!r}", hint="cancel, pause or resume")
    act(request.app.state.tunery.store, who.caller, job_id)
    return RedirectResponse(f"{UI}/jobs/{job_id}", status_code=303)
