"""The CLI's client for a remote server (TUNERY_URL): a bad URL, a server that is not tunery, and ids
that look like paths are clear errors or stay one path segment, never a traceback or another route."""

from __future__ import annotations

import httpx
import pytest

from tunery.errors import ConfigError, TuneryError
from tunery.platform.client import RemotePlatform


def platform_answering(handler) -> tuple[RemotePlatform, list[str]]:
    seen: list[str] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return handler(request)

    platform = RemotePlatform("http://tunery.test", "sk-test")
    platform.http = httpx.Client(base_url="http://tunery.test/v1", transport=httpx.MockTransport(record))
    return platform, seen


@pytest.mark.parametrize("url", ["http://[::1", "http://127.0.0.1:99999999"])
def test_a_malformed_url_is_a_clear_error(url):
    with pytest.raises(TuneryError) as raised:
        RemotePlatform(url, "sk-test").list_jobs()
    assert raised.value.code in ("invalid_url", "server_unreachable")


def test_an_id_that_looks_like_a_path_stays_one_segment():
    platform, seen = platform_answering(lambda request: httpx.Response(200, json={"id": "x"}))
    platform.delete_file("../keys/key-1")
    platform.act("../../keys/key-1", "cancel")
    assert seen == ["/v1/files/..%2Fkeys%2Fkey-1", "/v1/fine_tuning/jobs/..%2F..%2Fkeys%2Fkey-1/cancel"]


@pytest.mark.parametrize(("status", "content"), [(200, b"<html>hello</html>"), (200, b"[1, 2]"),
                                                 (500, b'{"error": "flat text"}'), (404, b"<html>no</html>")])
def test_a_server_that_is_not_tunery_is_named_not_a_traceback(status, content):
    platform, _ = platform_answering(lambda request: httpx.Response(status, content=content))
    with pytest.raises(TuneryError) as raised:
        platform.get_job("ftjob-1")
    assert isinstance(raised.value.message, str) and raised.value.code
    if status == 200:
        assert raised.value.code == "not_a_tunery_server"


def test_an_api_key_that_cannot_be_a_header_is_a_config_error():
    with pytest.raises((ConfigError, TuneryError)):
        RemotePlatform("http://tunery.test", "sk-\nline").list_jobs()
