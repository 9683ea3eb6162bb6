"""Handlers for `/v1/files` and `/v1/fine_tuning/jobs`: thin calls into `tunery.platform`, the
caller's key carried on each, run off the event loop (they touch the database and the disk).
"""

from __future__ import annotations

import asyncio

from fastapi import Request
from fastapi.responses import FileResponse

from tunery.platform import files as file_service
from tunery.platform import jobs as job_service
from tunery.server.auth import Caller
from tunery.server.errors import ApiError
from tunery.server.state import ServerState
from tunery.server.uploads import receive_upload
from tunery.store.files import get_file as get_row
from tunery.store.owners import Actor


def actor_of(caller: Caller) -> Actor:
    return Actor(key_id=caller.key_id, admin=caller.admin)


async def upload_file(state: ServerState, request: Request, caller: Caller) -> dict:
    writer, fields, filename = await receive_upload(request, state.settings.max_upload_bytes)
    row = await asyncio.to_thread(writer.commit, state.store, actor_of(caller), filename=filename,
                                  purpose=fields.get("purpose"))
    return file_service.file_object(row)


async def list_files(state: ServerState, caller: Caller, purpose: str | None, after: str | None,
                     limit: int) -> dict:
    return await asyncio.to_thread(file_service.list_file_objects, state.store, actor_of(caller),
                                   purpose=purpose, after=after, limit=_limit(limit, 10_000))


async def get_file(state: ServerState, caller: Caller, file_id: str) -> dict:
    return file_service.file_object(await asyncio.to_thread(get_row, state.store, actor_of(caller), file_id))


async def file_content(state: ServerState, caller: Caller, file_id: str) -> FileResponse:
    row, path = await asyncio.to_thread(file_service.file_content_path, state.store, actor_of(caller), file_id)
    media = "text/csv" if row["filename"].endswith(".csv") else "application/octet-stream"
    return FileResponse(path, media_type=media, filename=row["filename"])


async def delete_file(state: ServerState, caller: Caller, file_id: str) -> dict:
    return await asyncio.to_thread(file_service.delete_file, state.store, actor_of(caller), file_id)


async def create_job(state: ServerState, request: Request, caller: Caller) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON", code="invalid_request") from None
    return await asyncio.to_thread(job_service.create_job, state.store, actor_of(caller), body,
                                   base_models=state.fine_tunable_models())


async def job_call(function, state: ServerState, caller: Caller, *args, **kwargs) -> dict:
    """Any of the jobs service's read or state calls, as the caller."""
    return await asyncio.to_thread(function, state.store, actor_of(caller), *args, **kwargs)


def metadata_filter(request: Request) -> dict[str, str]:
    """`metadata[key]=value` query parameters, as the openai client sends them."""
    found = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            found[name[len("metadata["):-1]] = value
    return found


def _limit(limit: int, most: int) -> int:
    if not 1 <= limit <= most:
        raise ApiError(400, f"limit must be between 1 and {most}", param="limit", code="invalid_limit")
    return limit
