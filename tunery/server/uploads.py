"""`POST /v1/files` bodies parsed as they stream: the `file` part goes straight into an UploadWriter
(hashed, capped, on disk), the small form fields are kept; nothing is buffered whole in memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import Request

from tunery.errors import ConfigError
from tunery.platform.files import UploadWriter
from tunery.server.errors import ApiError

MAX_FIELD_BYTES = 1024


async def receive_upload(request: Request, max_bytes: int) -> tuple[UploadWriter, dict[str, str], str | None]:
    """(writer holding the file bytes, form fields, the client's filename); the caller commits or aborts."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise ApiError(400, "upload a file as multipart/form-data with fields 'file' and 'purpose'",
                       code="invalid_request")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + 64 * 1024:
        raise ApiError(413, f"the file is larger than the {max_bytes / 2**20:g} MB upload limit",
                       code="file_too_large", param="file")
    writer = await asyncio.to_thread(UploadWriter, max_bytes)
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "name": None, "filename": None, "buffer": b""}
    fields: dict[str, str] = {}
    found: dict[str, str | None] = {"filename": None, "file": None}

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished():
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        state["name"] = disposition.get(b"name", b"").decode("utf-8", "replace")
        filename = disposition.get(b"filename")
        state["filename"] = filename.decode("utf-8", "replace") if filename is not None else None
        if state["name"] == "file":
            found["file"], found["filename"] = "yes", state["filename"]

    def on_part_data(data, start, end):
        if state["name"] == "file":
            writer.write(data[start:end])
        else:
            state["buffer"] += data[start:end]
            if len(state["buffer"]) > MAX_FIELD_BYTES:
                raise ConfigError(f"form field {state['name']!r} is too long", code="invalid_request")

    def on_part_end():
        if state["name"] != "file":
            fields[state["name"]] = state["buffer"].decode("utf-8", "replace")
        state.update(headers={}, buffer=b"", name=None)

    parser = MultipartParser(options[b"boundary"], {
        "on_header_field": on_header_field, "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished, "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except ConfigError as exc:
        writer.abort()
        if exc.code == "file_too_large":
            raise ApiError(413, exc.message, code=exc.code, param="file") from None
        raise
    except Exception:  # a malformed body: nothing of it stays on disk
        writer.abort()
        raise ApiError(400, "the multipart body is malformed", code="invalid_request") from None
    if found["file"] is None:
        writer.abort()
        raise ApiError(400, "the form has no 'file' field", code="invalid_request", param="file")
    return writer, fields, found["filename"]
