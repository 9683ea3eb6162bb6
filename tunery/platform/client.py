"""One interface to files and jobs for the CLI: the local store directly, or a tunery server over
HTTP when TUNERY_URL is set (with TUNERY_API_KEY). Both answer in OpenAI's object shapes.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from tunery.errors import ConfigError, NotFoundError, TuneryError
from tunery.platform import files as file_service
from tunery.platform import jobs as job_service
from tunery.store import files as file_rows
from tunery.store import open_store
from tunery.store.owners import LOCAL_OWNER

CHUNK_BYTES = 1 << 20


def open_platform(url: str | None = None, api_key: str | None = None):
    """RemotePlatform when a URL is given or TUNERY_URL is set, else LocalPlatform over open_store()."""
    url = url or os.environ.get("TUNERY_URL")
    if url:
        return RemotePlatform(url, api_key or os.environ.get("TUNERY_API_KEY"))

    return LocalPlatform(open_store())


class LocalPlatform:
    where = "the local store"

    def __init__(self, store):
        self.store = store

    def upload(self, path: Path, purpose: str = "fine-tune") -> dict:
        with open(path, "rb") as handle:
            chunks = iter(lambda: handle.read(CHUNK_BYTES), b"")
            row = file_service.save_upload(self.store, LOCAL_OWNER, chunks, filename=path.name, purpose=purpose)
        return file_service.file_object(row)

    def list_files(self) -> list[dict]:
        return file_service.list_file_objects(self.store, LOCAL_OWNER)["data"]

    def get_file(self, file_id: str) -> dict:
        return file_service.file_object(file_rows.get_file(self.store, LOCAL_OWNER, file_id))

    def delete_file(self, file_id: str) -> dict:
        return file_service.delete_file(self.store, LOCAL_OWNER, file_id)

    def create_job(self, body: dict) -> dict:
        return job_service.create_job(self.store, LOCAL_OWNER, body)

    def list_jobs(self, after: str | None = None, limit: int = 20) -> dict:
        return job_service.list_jobs(self.store, LOCAL_OWNER, after=after, limit=limit)

    def get_job(self, job_id: str) -> dict:
        return job_service.get_job(self.store, LOCAL_OWNER, job_id)

    def act(self, job_id: str, action: str) -> dict:
        call = {"cancel": job_service.cancel_job, "pause": job_service.pause_job, "resume": job_service.resume_job}
        return call[action](self.store, LOCAL_OWNER, job_id)

    def events(self, job_id: str, limit: int = 100) -> list[dict]:
        return job_service.list_events(self.store, LOCAL_OWNER, job_id, limit=limit)["data"]


def _segment(value: str) -> str:
    """An id as one URL path segment: `../keys/ID` must not become another route."""
    return quote(value, safe="")


class RemotePlatform:
    def __init__(self, url: str, api_key: str | None):
        import httpx

        base = url.rstrip("/")
        self.where = base
        base = base if base.endswith("/v1") else base + "/v1"
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            self.http = httpx.Client(base_url=base, headers=headers, timeout=120)
        except (httpx.InvalidURL, ValueError) as exc:  # a malformed URL, or a key that cannot be a header
            raise ConfigError(f"cannot use TUNERY_URL {url!r} with this API key: {exc}", code="invalid_url",
                              hint="set TUNERY_URL to the server's address, e.g. http://127.0.0.1:8000") from None

    def _call(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise TuneryError(f"cannot reach the tunery server at {self.where}: {type(exc).__name__}",
                              code="server_unreachable", hint="check TUNERY_URL, and that `tunery serve` runs") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if not isinstance(error, dict):
                error = {"message": response.text[:500], "code": str(response.status_code)}
            kind = NotFoundError if response.status_code == 404 else ConfigError
            raise kind(str(error.get("message") or "request refused"), code=str(error.get("code") or "server_error"))
        if not isinstance(body, dict):  # TUNERY_URL names some other web server
            raise TuneryError(f"{self.where} answered {path} with something other than a JSON object: is it a tunery "
                              "server?", code="not_a_tunery_server", hint="check TUNERY_URL")
        return body

    def upload(self, path: Path, purpose: str = "fine-tune") -> dict:
        with open(path, "rb") as handle:
            return self._call("POST", "/files", files={"file": (path.name, handle)}, data={"purpose": purpose})

    def list_files(self) -> list[dict]:
        return self._call("GET", "/files")["data"]

    def get_file(self, file_id: str) -> dict:
        return self._call("GET", f"/files/{_segment(file_id)}")

    def delete_file(self, file_id: str) -> dict:
        return self._call("DELETE", f"/files/{_segment(file_id)}")

    def create_job(self, body: dict) -> dict:
        return self._call("POST", "/fine_tuning/jobs", json=body)

    def list_jobs(self, after: str | None = None, limit: int = 20) -> dict:
        params = {"limit": limit, **({"after": after} if after else {})}
        return self._call("GET", "/fine_tuning/jobs", params=params)

    def get_job(self, job_id: str) -> dict:
        return self._call("GET", f"/fine_tuning/jobs/{_segment(job_id)}")

    def act(self, job_id: str, action: str) -> dict:
        return self._call("POST", f"/fine_tuning/jobs/{_segment(job_id)}/{action}")

    def events(self, job_id: str, limit: int = 100) -> list[dict]:
        return self._call("GET", f"/fine_tuning/jobs/{_segment(job_id)}/events", params={"limit": limit})["data"]
