"""Datasets: uploaded training files with their check reports, and an example viewer that shows
what the model is trained on (the trained tokens highlighted, as `tunery data show`).

Uploads go through the files service behind /v1/files; reports come from `tunery data check`.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from tunery.data.check import check_dataset
from tunery.data.show import show_example
from tunery.errors import DataError
from tunery.platform.files import delete_file, file_content_path, file_object, list_file_objects
from tunery.web.app import UI, render
from tunery.web.auth import CSRF_FIELD, Forbidden, Viewer, posted_viewer, viewer
from tunery.web.session import check_csrf

router = APIRouter()


async def upload_file(request: Request, who: Viewer) -> dict:
    """Stream a browser upload into the files service as /v1/files does (capped while it streams);
    the form's CSRF token is checked before anything is recorded. Returns the file object."""
    from tunery.server.uploads import receive_upload

    state = request.app.state.tunery
    writer, fields, filename = await receive_upload(request, state.settings.max_upload_bytes)
    if not check_csrf(request.app.state.console_secret, who.nonce, fields.get(CSRF_FIELD)):
        writer.abort()
        raise Forbidden("the form's security token is missing or stale: reload the page and try again")
    row = await asyncio.to_thread(writer.commit, state.store, who.caller, filename=filename, purpose="fine-tune")
    return file_object(row)


def check_report(request: Request, who: Viewer, file_id: str) -> dict:
    """`tunery data check` on a stored file, its problems naming the upload's own name and lines."""
    row, path = file_content_path(request.app.state.tunery.store, who.caller, file_id)
    report = check_dataset(path, min_examples=1)
    for problem in report["problems"]:
        problem["message"] = problem["message"].replace(str(path), row["filename"])
    return {"file": row, "report": report}


def training_files(request: Request, who: Viewer) -> list[dict]:
    return list_file_objects(request.app.state.tunery.store, who.caller, purpose="fine-tune")["data"]


@router.get("/datasets")
def datasets_page(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "datasets.html", who, active="datasets", files=training_files(request, who))


@router.post("/datasets")
async def upload(request: Request, who: Viewer = Depends(viewer)):
    uploaded = await upload_file(request, who)
    return RedirectResponse(f"{UI}/datasets/{uploaded['id']}", status_code=303)


@router.get("/datasets/{file_id}")
def dataset_page(file_id: str, request: Request, index: int = 0, who: Viewer = Depends(viewer)):
    checked = check_report(request, who, file_id)
    shown, show_error = None, None
    if checked["report"]["summary"]["examples"]:
        _, path = file_content_path(request.app.state.tunery.store, who.caller, file_id)
        try:
            shown = show_example(path, request.app.state.tunery.tokenizer, max(index, 0))
        except DataError as exc:
            show_error = exc.message.replace(str(path), checked["file"]["filename"])
    return render(request, "dataset.html", who, active="datasets", shown=shown, show_error=show_error,
                  base=request.app.state.tunery.base_name, **checked)


@router.post("/datasets/{file_id}/delete")
def delete(file_id: str, request: Request, who: Viewer = Depends(posted_viewer)):
    delete_file(request.app.state.tunery.store, who.caller, file_id)
    return RedirectResponse(f"{UI}/datasets", status_code=303)


@router.post("/datasets/check")
async def upload_and_check(request: Request, who: Viewer = Depends(viewer)):
    """The New job page's inline upload: the check report, and the job form when the file is usable."""
    from tunery.web.pages_jobs import job_form_context

    uploaded = await upload_file(request, who)
    checked = await asyncio.to_thread(check_report, request, who, uploaded["id"])
    context = {}
    if uploaded["status"] != "error":
        context = await asyncio.to_thread(job_form_context, request, who, training_file=uploaded["id"])
    return render(request, "_upload_result.html", who, uploaded=uploaded, **checked, **context)
