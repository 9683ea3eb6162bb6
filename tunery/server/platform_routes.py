"""Routes for files and fine-tuning jobs, in OpenAI's paths and shapes; each a one-line call into
`serving_platform` (no SQL, no torch here).
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Query, Request

from tunery.platform import jobs as job_service
from tunery.server import serving_platform as sp
from tunery.server.auth import Caller, require_key


def add_platform_routes(app: FastAPI) -> None:
    def state(request: Request):
        return request.app.state.tunery

    @app.post("/v1/files")
    async def upload_file(request: Request, caller: Caller = Depends(require_key)):
        return await sp.upload_file(state(request), request, caller)

    @app.get("/v1/files")
    async def list_files(request: Request, purpose: str | None = None, after: str | None = None,
                         limit: int = Query(10_000), caller: Caller = Depends(require_key)):
        return await sp.list_files(state(request), caller, purpose, after, limit)

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, request: Request, caller: Caller = Depends(require_key)):
        return await sp.get_file(state(request), caller, file_id)

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request, caller: Caller = Depends(require_key)):
        return await sp.file_content(state(request), caller, file_id)

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request, caller: Caller = Depends(require_key)):
        return await sp.delete_file(state(request), caller, file_id)

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request, caller: Caller = Depends(require_key)):
        return await sp.create_job(state(request), request, caller)

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request, after: str | None = None, limit: int = Query(20),
                        caller: Caller = Depends(require_key)):
        return await sp.job_call(job_service.list_jobs, state(request), caller, after=after, limit=limit,
                                 metadata=sp.metadata_filter(request))

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(job_id: str, request: Request, caller: Caller = Depends(require_key)):
        return await sp.job_call(job_service.get_job, state(request), caller, job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str, request: Request, caller: Caller = Depends(require_key)):
        return await sp.job_call(job_service.cancel_job, state(request), caller, job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/pause")
    async def pause_job(job_id: str, request: Request, caller: Caller = Depends(require_key)):
        return await sp.job_call(job_service.pause_job, state(request), caller, job_id)

    @app.post("/v1/fine_tuning/jobs/{job_id}/resume")
    async def resume_job(job_id: str, request: Request, caller: Caller = Depends(require_key)):
        return await sp.job_call(job_service.resume_job, state(request), caller, job_id)

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def job_events(job_id: str, request: Request, after: str | None = None, limit: int = Query(20),
                         caller: Caller = Depends(require_key)):
        return await sp.job_call(job_service.list_events, state(request), caller, job_id, after=after, limit=limit)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def job_checkpoints(job_id: str, request: Request, after: str | None = None, limit: int = Query(10),
                              caller: Caller = Depends(require_key)):
        return await sp.job_call(job_service.list_checkpoints, state(request), caller, job_id, after=after,
                                 limit=limit)
