"""Hostile HTTP input: strict types, clean text, no echo, and a fuzzed body on every route.

No request gets a 500 or a traceback, every error has OpenAI's JSON shape, and no error message
repeats a value the request sent.
"""

from __future__ import annotations

import json
import re
import socket
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.test_ownership import ROUTES

CHAT = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
MARKER = "QZXJ"  # a value no message of ours contains


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=60,
                      headers={"Authorization": f"Bearer {live.admin_key}"}) as client:
        yield client


def assert_error_shape(response, status=None):
    assert response.status_code < 500, response.text
    if status is not None:
        assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize("content", ["a\\ud800b", "\\udfff", "a\\u0000b"])
def test_a_lone_surrogate_or_nul_is_a_located_400_and_the_connection_survives(http, content):
    raw = json.dumps(CHAT).replace('"hi"', f'"{content}"')
    error = assert_error_shape(http.post("/v1/chat/completions", content=raw,
                                         headers={"Content-Type": "application/json"}), 400)
    assert "messages.0.content" in error["message"]
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200  # same keep-alive connection


@pytest.mark.parametrize("field, value", [("max_tokens", True), ("max_tokens", "5"), ("stream", "yes"),
                                          ("temperature", "0.5"), ("n", 1.0), ("seed", False)])
def test_no_coercion_of_wrong_types(http, field, value):
    error = assert_error_shape(http.post("/v1/chat/completions", json={**CHAT, field: value}), 400)
    assert error["param"] == field


@pytest.mark.parametrize("extra, param", [({"seed": "7"}, "seed"), ({"seed": True}, "seed"),
                                          ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs.int"),
                                          ({"hyperparameters": {"batch_size": "4"}}, "hyperparameters.batch_size.int")])
def test_no_coercion_in_a_job_request(http, extra, param):
    # true is not 1 epoch and "7" not a seed: refused before the training file is even looked up
    error = assert_error_shape(http.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": "file-x",
                                                                      **extra}), 400)
    assert error["param"] == param


def test_feedback_rating_true_is_not_one(http):
    for rating in (True, 1.0, "1"):
        assert_error_shape(http.post("/v1/feedback", json={"completion_id": "x", "rating": rating}), 400)


def test_errors_never_echo_request_values(http):
    unknown = http.post("/v1/chat/completions", json={**CHAT, "model": MARKER + "-model"})
    assert assert_error_shape(unknown, 404) and MARKER not in unknown.text
    long_name = http.post("/v1/adapters", json={"name": MARKER * 1250, "run": "support-v1"})
    assert_error_shape(long_name)
    assert MARKER not in long_name.text
    gone = http.delete(f"/v1/adapters/{MARKER}")
    assert_error_shape(gone, 404)
    assert MARKER not in gone.text
    # Registry names in the path: unknown names, versions and aliases, and a rollback with nothing to go back to.
    for method, path in [("POST", f"/v1/registry/models/{MARKER}0/rollback"), ("GET", f"/v1/registry/models/{MARKER}0"),
                         ("GET", f"/v1/registry/models/{MARKER}0@05"), ("GET", f"/v1/registry/models/{MARKER}0@beta")]:
        refused = http.request(method, path, json={} if method == "POST" else None)
        assert_error_shape(refused)
        assert MARKER not in refused.text, (path, refused.text)


def test_registry_refusals_on_existing_versions_never_echo_the_names_given(http, live, adapter_run):
    from tunery.platform.registry import register_run

    name = MARKER + "1"  # a registered model and alias named by the client: short, unquoted in our wording
    register_run(live.state.store, adapter_run, name, alias=MARKER)
    for body in ({"version": f"{name}@1", "to": MARKER}, {"version": f"{name}@{MARKER}", "to": MARKER},
                 {"version": f"{name}@1", "to": MARKER + "!"}):
        refused = http.post("/v1/registry/promote", json=body)
        assert_error_shape(refused)
        assert MARKER not in refused.text, (body, refused.text)
    rollback = http.post(f"/v1/registry/models/{name}/rollback", json={"alias": MARKER})
    assert_error_shape(rollback)
    assert MARKER not in rollback.text, rollback.text


def test_names_ending_in_a_newline_are_refused(http, live, adapter_run):
    response = http.post("/v1/adapters", json={"name": "support2\n", "run": str(adapter_run)})
    assert_error_shape(response, 400)
    assert "support2\n" not in live.state.engine.adapter_names()


def test_a_malformed_content_length_never_reaches_a_handler(live):
    host, port = live.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 12abc\r\n\r\n{}")
        reply = sock.recv(65536).decode("latin-1")
    status = int(reply.split(" ", 2)[1])
    assert 400 <= status < 500 and "Traceback" not in reply


def _route_path(path: str, draw_text) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: draw_text, path)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
FIELDS = ["model", "messages", "prompt", "max_tokens", "stream", "n", "stop", "temperature", "top_p", "seed",
          "completion_id", "rating", "correction", "comment", "name", "run", "admin", "role", "content"]
BODIES = st.one_of(
    JSON_VALUES,
    st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES, max_size=6),
    st.builds(lambda extra: {**CHAT, **extra}, st.dictionaries(st.sampled_from(FIELDS[3:10]), JSON_VALUES, max_size=2)),
    st.builds(lambda text: {**CHAT, "messages": [{"role": "user", "content": text}]},
              st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0xFFFF), max_size=8)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(route=st.sampled_from(sorted(ROUTES)), body=BODIES, path_text=st.text(min_size=1, max_size=12),
       raw=st.booleans())
def test_fuzzed_bodies_on_every_route_get_no_500(http, route, body, path_text, raw):
    method, path = route
    url = _route_path(path, quote(MARKER + path_text, safe=""))
    if isinstance(body, dict) and isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = min(abs(body["max_tokens"]), 4)  # keep generation short
    if raw:  # bytes that may not even be JSON (invalid UTF-8, escapes of surrogates)
        content = json.dumps(body, ensure_ascii=True).encode() + b"\xff" * (len(path_text) % 2)
    else:
        content = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    response = http.request(method, url, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code < 500, (method, url, content[:200], response.text)
    if response.status_code >= 400:
        assert_error_shape(response)
        assert MARKER not in response.text
