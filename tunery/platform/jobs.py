"""The jobs service: create (strictly checked), list, retrieve, cancel, pause, resume, events and
checkpoints of fine-tuning jobs, in OpenAI's object shapes; and the `ft:` names jobs produce.

Every call carries the acting key; another key's job answers like a missing one. Which base
models a job may name is the caller's to say: a server passes the names it serves, the local CLI
(None) may name any model reference, as `tunery train` can.
"""

from __future__ import annotations

import json
from pathlib import Path

from tunery.errors import ConfigError, ModelError, NotFoundError
from tunery.models.builtin import BUILTIN_MODELS
from tunery.models.resolve import resolve_model
from tunery.paths import runs_dir
from tunery.platform.files import blob_path
from tunery.platform.job_spec import JobRequest, build_config, check_file_fits_method, parse_job_request
from tunery.store import files as file_rows
from tunery.store import job_history
from tunery.store import jobs as job_rows
from tunery.store.db import Store
from tunery.store.owners import Actor

MAX_LIST_LIMIT = 1000


def create_job(store: Store, actor: Actor, body: dict, *, base_models: dict[str, str] | None = None,
               init_from: str | None = None) -> dict:
    """Check the request, its files and its config (exactly as the worker will build it); queue the job.

    `init_from` (the loop's candidate, never a client's request) continues a registered run's adapter."""
    request = parse_job_request(body)
    base_ref = resolve_base(request.model, base_models)
    train_row = _training_file(store, actor, request.training_file, "training_file")
    valid_row = _training_file(store, actor, request.validation_file, "validation_file") \
        if request.validation_file else None
    check_file_fits_method(request, blob_path(train_row["sha256"]), train_row["filename"])
    job_id = job_rows.new_id("ftjob")
    build_config(request, job_id=job_id, base_ref=base_ref, train_path=blob_path(train_row["sha256"]),
                 validation_path=blob_path(valid_row["sha256"]) if valid_row else None, run_dir=run_dir_of(job_id),
                 init_from=init_from)
    method = {"type": request.method_type,
              request.method_type: {"hyperparameters": request.hyper.model_dump(exclude_none=True)}}
    row = job_rows.insert_job(store, {
        "id": job_id, "owner": actor.key_id, "model": request.model, "training_file": request.training_file,
        "validation_file": request.validation_file, "suffix": request.suffix,
        "seed": request.seed if request.seed is not None else 42,
        "metadata_json": json.dumps(request.metadata) if request.metadata is not None else None,
        "method_json": json.dumps(method), "tunery_json": json.dumps({"base_ref": base_ref, **request.tunery,
                                                         **({"init_from": init_from} if init_from else {})}),
        "hyperparameters_json": json.dumps(request.hyper.model_dump(exclude_none=True)),
        "status": "queued", "run_dir": str(run_dir_of(job_id)),
    }, message=f"Validated training file: {train_row['filename']} ({train_row['examples']} examples)")
    return job_object(row)


def request_of(row: dict) -> tuple[JobRequest, str]:
    """The stored job as its request again, and the base model reference it resolved to."""
    extra = json.loads(row["tunery_json"])
    base_ref = extra.pop("base_ref")
    extra.pop("init_from", None)  # see init_from_of
    method = json.loads(row["method_json"])
    request = JobRequest(model=row["model"], training_file=row["training_file"],
                         validation_file=row["validation_file"], suffix=row["suffix"], seed=row["seed"],
                         method=method, tunery=extra)
    return request, base_ref


def init_from_of(row: dict) -> str | None:
    """The run whose adapter the job continues (set only by the loop), if any."""
    return json.loads(row["tunery_json"]).get("init_from")


def resolve_base(model: str, base_models: dict[str, str] | None) -> str:
    """The model reference behind a job's `model`; unknown names are a 400 with the allowed ones."""
    if base_models is not None:
        if model in base_models:
            return base_models[model]
        if model in BUILTIN_MODELS:
            return model
        error = ConfigError(f"model {model!r} is not a base model this server can fine-tune", code="invalid_model",
                            hint=f"available: {', '.join(sorted({*base_models, *BUILTIN_MODELS}))}")
        error.param = "model"
        raise error

    if model in BUILTIN_MODELS:
        return model
    try:
        return str(resolve_model(model).ref)
    except ModelError as exc:
        raise ConfigError(exc.message, code="invalid_model", hint=exc.hint) from None


def _training_file(store: Store, actor: Actor, file_id: str, param: str) -> dict:
    try:
        row = file_rows.get_file(store, actor, file_id)
    except NotFoundError:
        error = ConfigError(f"{param} {file_id!r} does not exist", code="file_not_found")
        error.param = param
        raise error from None
    if row["purpose"] != "fine-tune":
        error = ConfigError(f"{param} {file_id} has purpose {row['purpose']!r}, not 'fine-tune'", code="invalid_file")
        error.param = param
        raise error
    if row["status"] == "error":
        error = ConfigError(f"{param} {file_id} failed validation:\n{row['status_details']}", code="invalid_file",
                            hint="fix the lines named and upload the file again")
        error.param = param
        raise error
    return row


def run_dir_of(job_id: str) -> Path:
    return runs_dir() / job_id


def fine_tuned_name(row: dict) -> str:
    """`ft:<base>:<suffix>:<8 characters of the job id>`; a local path base is named by its folder."""
    base = Path(row["model"]).name if "/" in row["model"] else row["model"]
    return f"ft:{base}:{row['suffix'] or ''}:{row['id'].split('-', 1)[1][:8]}"


def job_object(row: dict) -> dict:
    """OpenAI's fine_tuning.job object."""
    method = json.loads(row["method_json"])
    error = json.loads(row["error_json"]) if row.get("error_json") else None
    return {
        "object": "fine_tuning.job", "id": row["id"], "model": row["model"], "created_at": row["created_at"],
        "finished_at": row["finished_at"], "fine_tuned_model": row["fine_tuned_model"],
        "organization_id": "tunery", "result_files": json.loads(row["result_files_json"]),
        "status": row["status"], "validation_file": row["validation_file"], "training_file": row["training_file"],
        "hyperparameters": json.loads(row["hyperparameters_json"]), "trained_tokens": row["trained_tokens"],
        "error": error or {}, "seed": row["seed"], "estimated_finish": row["estimated_finish"],
        "integrations": [], "user_provided_suffix": row["suffix"], "method": method,
        "metadata": json.loads(row["metadata_json"]) if row["metadata_json"] else None,
        "tunery": {"run_dir": Path(row["run_dir"]).name if row["run_dir"] else None, "step": row["step"],
                   "total_steps": row["total_steps"], "attempts": row["attempts"], "worker_id": row["worker_id"]},
    }


def get_job(store: Store, actor: Actor, job_id: str) -> dict:
    return job_object(job_rows.get_job(store, actor, job_id))


def list_jobs(store: Store, actor: Actor, *, after: str | None = None, limit: int = 20,
              metadata: dict[str, str] | None = None) -> dict:
    rows, more = job_rows.list_jobs(store, actor, after=after, limit=_limit(limit), metadata=metadata)
    return {"object": "list", "data": [job_object(r) for r in rows], "has_more": more}


def cancel_job(store: Store, actor: Actor, job_id: str) -> dict:
    return job_object(job_rows.request_stop(store, actor, job_id, "cancel"))


def pause_job(store: Store, actor: Actor, job_id: str) -> dict:
    return job_object(job_rows.request_stop(store, actor, job_id, "pause"))


def resume_job(store: Store, actor: Actor, job_id: str) -> dict:
    return job_object(job_rows.resume_job(store, actor, job_id))


def list_events(store: Store, actor: Actor, job_id: str, *, after: str | None = None, limit: int = 20,
                oldest_first: bool = False) -> dict:
    rows, more = job_history.list_events(store, actor, job_id, after=after, limit=_limit(limit),
                                         oldest_first=oldest_first)
    return {"object": "list", "has_more": more, "data": [
        {"object": "fine_tuning.job.event", "id": r["id"], "created_at": r["created_at"], "level": r["level"],
         "message": r["message"], "type": r["type"], "data": json.loads(r["data_json"]) if r["data_json"] else {}}
        for r in rows]}


def list_checkpoints(store: Store, actor: Actor, job_id: str, *, after: str | None = None, limit: int = 10) -> dict:
    job = job_rows.get_job(store, actor, job_id)
    rows, more = job_history.list_checkpoints(store, actor, job_id, after=after, limit=_limit(limit))
    base = fine_tuned_name(job)
    data = [{"object": "fine_tuning.job.checkpoint", "id": r["id"], "created_at": r["created_at"],
             "fine_tuned_model_checkpoint": f"{base}:ckpt-step-{r['step']}", "step_number": r["step"],
             "metrics": json.loads(r["metrics_json"]), "fine_tuning_job_id": job_id} for r in rows]
    return {"object": "list", "data": data, "has_more": more,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None}


def _limit(limit: int) -> int:
    if not 1 <= int(limit) <= MAX_LIST_LIMIT:
        raise ConfigError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}", code="invalid_limit")
    return int(limit)
