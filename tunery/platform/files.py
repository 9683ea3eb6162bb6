"""The files service: uploads streamed to disk, stored by sha256 under TUNERY_HOME/files, validated
with the same checks as `tunery data check`, in OpenAI's file object shape.

The client's filename is only a label: it is sanitised and never becomes a path. An upload over
the size cap is refused while it streams and leaves nothing on disk.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

from tunery.data.check import check_dataset
from tunery.errors import ConfigError, NotFoundError
from tunery.paths import tunery_home
from tunery.safeio import open_private
from tunery.store import files as file_rows
from tunery.store.db import Store
from tunery.store.owners import Actor

PURPOSES = ("fine-tune",)
RESULT_PURPOSE = "fine-tune-results"
DEFAULT_MAX_UPLOAD_MB = 512
MAX_DETAIL_PROBLEMS = 20
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def files_dir() -> Path:
    path = tunery_home() / "files"
    path.mkdir(parents=True, exist_ok=True)
    return path


def blob_path(sha256: str) -> Path:
    """Where the bytes with this digest live (the digest is ours, never the client's)."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError("not a sha256 digest")
    return files_dir() / sha256[:2] / f"{sha256}.jsonl"


def sanitise_filename(name: str | None) -> str:
    """The last path part, unsafe characters replaced, at most 128 characters; a label only."""
    base = re.split(r"[/\\]", name or "")[-1]
    cleaned = _UNSAFE.sub("_", base).strip(" .")[:128]
    return cleaned or "upload.jsonl"


class UploadWriter:
    """Bytes of one upload on their way to disk: hashed and counted as they come, refused past the cap.

    `commit` stores them by content and records the file; `abort` (or any error) leaves nothing.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20):
        self.max_bytes, self.size, self.digest = max_bytes, 0, hashlib.sha256()
        self.tmp = files_dir() / f".upload-{secrets.token_hex(8)}"
        self.out = open_private(self.tmp, "wb")  # training data: owner-only; closed by commit/abort

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.abort()
            raise ConfigError(f"the file is larger than the {self.max_bytes / 2**20:g} MB upload limit",
                              code="file_too_large", hint="split the dataset, or raise --max-upload-mb")
        self.digest.update(chunk)
        self.out.write(chunk)

    def abort(self) -> None:
        self.out.close()
        self.tmp.unlink(missing_ok=True)

    def commit(self, store: Store, actor: Actor, *, filename: str | None, purpose: str | None) -> dict:
        try:
            self.out.close()
            if purpose not in PURPOSES:
                raise ConfigError(f"purpose {purpose!r} is not supported", code="invalid_purpose",
                                  hint="upload training data with purpose='fine-tune'")
            if self.size == 0:
                raise ConfigError("the uploaded file is empty", code="empty_file",
                                  hint="upload a JSONL file with one training example per line")
            sha = self.digest.hexdigest()
            target = blob_path(sha)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp, target)  # identical content lands on the same blob
        finally:
            self.tmp.unlink(missing_ok=True)
        label = sanitise_filename(filename)
        status, details, examples = validate_blob(target, label)
        return file_rows.insert_file(store, actor, filename=label, purpose=purpose, bytes=self.size, sha256=sha,
                                     status=status, status_details=details, examples=examples)


def save_upload(store: Store, actor: Actor, chunks: Iterable[bytes], *, filename: str | None, purpose: str,
                max_bytes: int = DEFAULT_MAX_UPLOAD_MB * 2**20) -> dict:
    """Stream `chunks` to disk, store them by content, validate, and record the file; returns the row."""
    if purpose not in PURPOSES:
        raise ConfigError(f"purpose {purpose!r} is not supported", code="invalid_purpose",
                          hint="upload training data with purpose='fine-tune'")
    writer = UploadWriter(max_bytes)
    try:
        for chunk in chunks:
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.commit(store, actor, filename=filename, purpose=purpose)


def validate_blob(path: Path, label: str) -> tuple[str, str | None, int]:
    """`tunery data check` on the stored bytes: (status, status_details naming line and field, examples)."""
    report = check_dataset(path)
    problems = [p for p in report["problems"] if p["severity"] == "error"]
    if not problems:
        return "processed", None, report["summary"]["examples"]
    lines = [_describe(p, label, str(path)) for p in problems[:MAX_DETAIL_PROBLEMS]]
    more = report["summary"]["errors"] - len(lines)
    if more > 0:
        lines.append(f"... and {more} more error(s)")
    return "error", "\n".join(lines), report["summary"]["examples"]


def _describe(problem: dict, label: str, blob: str) -> str:
    """A problem as `data check` prints it, with the upload's name in place of the blob's path."""
    where = label + (f":{problem['line']}" if problem["line"] else "")
    field = f" {problem['field']}" if problem["field"] else ""
    message = problem["message"].replace(blob, label)
    return f"{where}{field}: error [{problem['code']}] {message}"


def file_object(row: dict) -> dict:
    """OpenAI's file object."""
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"],
            "status_details": row["status_details"], "expires_at": None}


def file_content_path(store: Store, actor: Actor, file_id: str) -> tuple[dict, Path]:
    row = file_rows.get_file(store, actor, file_id)
    path = blob_path(row["sha256"])
    if not path.is_file():
        raise NotFoundError(f"the content of file {file_id} is missing from the files folder", code="file_missing")
    return row, path


def delete_file(store: Store, actor: Actor, file_id: str) -> dict:
    """Delete the row, and the blob when no other row names it; OpenAI's deletion object."""
    row, unused = file_rows.delete_file(store, actor, file_id)
    if unused:
        blob_path(row["sha256"]).unlink(missing_ok=True)
    return {"id": row["id"], "object": "file", "deleted": True}


def save_result_file(store: Store, actor: Actor, name: str, content: bytes) -> dict:
    """A file the platform writes for a job (the metrics CSV), owned like the job."""
    sha = hashlib.sha256(content).hexdigest()
    target = blob_path(sha)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{secrets.token_hex(8)}")
    tmp.write_bytes(content)
    os.replace(tmp, target)
    return file_rows.insert_file(store, actor, filename=sanitise_filename(name), purpose=RESULT_PURPOSE,
                                 bytes=len(content), sha256=sha, status="processed", status_details=None)


def list_file_objects(store: Store, actor: Actor, *, purpose: str | None = None, after: str | None = None,
                      limit: int = 10_000) -> dict:
    rows, more = file_rows.list_files(store, actor, purpose=purpose, after=after, limit=limit)
    return {"object": "list", "data": [file_object(r) for r in rows], "has_more": more,
            "first_id": rows[0]["id"] if rows else None, "last_id": rows[-1]["id"] if rows else None}
