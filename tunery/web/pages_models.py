"""Models: registered names, versions with lineage (base -> parent -> version), aliases, reports and
production stats; promote (the gate's result shown before confirming) and rollback, for admins.

Every action is the registry's own (`tunery models promote|rollback`), audited with the key's id.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, RedirectResponse

from tunery.errors import NotFoundError
from tunery.platform import jobs, registry
from tunery.platform.registry import describe, register_run
from tunery.store import registry as rows
from tunery.web.app import UI, render
from tunery.web.auth import Viewer, posted_admin, posted_viewer, viewer

router = APIRouter()
GATE_LIMIT = 50  # task rows compared by default before a promotion from the console


def registry_view(store) -> list[dict]:
    """Each registered name with its versions (newest first), their aliases, lineage and stats."""
    names: dict[str, list] = {}
    for version in rows.list_versions(store):
        names.setdefault(version.name, []).append(version)
    view = []
    for name, versions in sorted(names.items()):
        described = [describe(store, v.ref) for v in reversed(versions)]
        view.append({"name": name, "versions": described, "aliases": sorted(
            (alias, v) for (_, alias), v in rows.aliases(store, name).items()),
            "history": list(reversed(rows.alias_history(store, name)))[:20]})
    return view


def version_of_job(store, job_id: str):
    return next((v for v in rows.list_versions(store) if v.job_id == job_id), None)


@router.get("/models")
def models_page(request: Request, who: Viewer = Depends(viewer)):
    return render(request, "models.html", who, active="models", names=registry_view(request.app.state.tunery.store))


@router.post("/models/{name}/{version}/promote")
async def promote(name: str, version: int, request: Request, alias: str = Form("production", max_length=64),
                  general: bool = Form(False), limit: int = Form(GATE_LIMIT, ge=1, le=10_000),
                  confirm: bool = Form(False), reason: str = Form("", max_length=2000),
                  who: Viewer = Depends(posted_admin)):
    store = request.app.state.tunery.store
    ref = f"{name}@{version}"
    candidate = registry.resolve_version(store, ref)
    if confirm:
        await asyncio.to_thread(registry.promote, store, ref, to=alias, general=general, limit=limit,
                                force=bool(reason.strip()), reason=reason.strip() or None, actor=who.key_id)
        return RedirectResponse(f"{UI}/models#{name}", status_code=303)
    holder_version = rows.alias_version(store, name, alias)
    holder = rows.get_version(store, name, holder_version) if holder_version is not None else None
    gate = None
    if holder is not None and general:
        gate = await asyncio.to_thread(registry.run_gates, holder, candidate, tasks=None,
                                       gates=list(registry.DEFAULT_GATES), general=True, out_dir=None, limit=limit)
    return render(request, "promote.html", who, active="models", candidate=candidate, holder=holder, alias=alias,
                  gate=gate, general=general, limit=limit)


@router.post("/models/{name}/rollback")
def rollback(name: str, request: Request, alias: str = Form("production", max_length=64),
             who: Viewer = Depends(posted_admin)):
    registry.rollback(request.app.state.tunery.store, name, alias=alias, actor=who.key_id)
    return RedirectResponse(f"{UI}/models#{name}", status_code=303)


@router.get("/models/{name}/{version}/report/{index}")
def report(name: str, version: int, index: int, request: Request, _: Viewer = Depends(viewer)):
    """An attached compare report (the existing HTML report), shown in the page's frame."""
    reports = rows.get_version(request.app.state.tunery.store, name, version).reports
    if not 0 <= index < len(reports):
        raise NotFoundError(f"{name}@{version} has no report {index}")
    path = _report_path(reports[index])
    html = path / "report.html" if path.is_dir() else path
    if html.suffix != ".html" or not html.is_file():
        raise NotFoundError("the report's HTML file is not on this server")
    return FileResponse(html, media_type="text/html")


def _report_path(entry) -> Path:
    """Where an attached report's HTML is: its own path, or the first comparison behind a loop's gate."""
    if not isinstance(entry, dict):
        return Path(str(entry))
    comparisons = (entry.get("gate") or {}).get("comparisons") or [{}]
    return Path(entry.get("report") or entry.get("path") or comparisons[0].get("report") or "")


@router.post("/jobs/{job_id}/register")
def register(job_id: str, request: Request, name: str = Form(..., max_length=64), who: Viewer = Depends(posted_viewer)):
    """Register a succeeded job's run as the next version of NAME (as `tunery models register`)."""
    store = request.app.state.tunery.store
    job = jobs.get_job(store, who.caller, job_id)  # the caller's own job (admins: any)
    if version_of_job(store, job_id) is None:
        register_run(store, jobs.run_dir_of(job["id"]), name.strip(), job_id=job["id"], created_by=who.key_id)
    return RedirectResponse(f"{UI}/jobs/{job_id}", status_code=303)
