"""Ownership: another key's objects answer like missing ones, admins act on all and are audited.

Every route is listed in ROUTES with the rule it follows, so a new route cannot arrive without one.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest

from tunery.store import create_key
from tunery.store.feedback_export import export_feedback
from tunery.store.owners import LOCAL_OWNER, Actor, list_audit
from tunery.store.requests import count_completions, get_completion, list_rated_completions

# (method, path) -> "public" | "any key" | "admin" | "owned"
ROUTES = {
    ("GET", "/health"): "public",
    ("GET", "/metrics"): "admin",
    ("GET", "/v1/models"): "any key",
    ("GET", "/v1/models/{model_id:path}"): "any key",  # another key's ft: model: tests/platform/test_openai_workflow
    ("POST", "/v1/chat/completions"): "any key",
    ("POST", "/v1/completions"): "any key",
    ("POST", "/v1/embeddings"): "any key",
    ("POST", "/v1/feedback"): "owned",
    ("GET", "/v1/adapters"): "admin",
    ("POST", "/v1/adapters"): "admin",
    ("DELETE", "/v1/adapters/{name}"): "admin",
    ("GET", "/v1/keys"): "admin",
    ("POST", "/v1/keys"): "admin",
    ("DELETE", "/v1/keys/{key_id}"): "admin",
    ("GET", "/v1/registry/models"): "admin",
    ("GET", "/v1/registry/models/{ref}"): "admin",
    ("POST", "/v1/registry/promote"): "admin",
    ("POST", "/v1/registry/models/{name}/rollback"): "admin",
    ("POST", "/v1/files"): "any key",
    ("GET", "/v1/files"): "owned",
    ("GET", "/v1/files/{file_id}"): "owned",
    ("GET", "/v1/files/{file_id}/content"): "owned",
    ("DELETE", "/v1/files/{file_id}"): "owned",
    ("POST", "/v1/fine_tuning/jobs"): "any key",
    ("GET", "/v1/fine_tuning/jobs"): "owned",
    ("GET", "/v1/fine_tuning/jobs/{job_id}"): "owned",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): "owned",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): "owned",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): "owned",
    ("GET", "/v1/fine_tuning/jobs/{job_id}/events"): "owned",
    ("GET", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): "owned",
}


def call(live, method, path, key, body=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, live.url + path, json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def keys(live):
    _, other = create_key(live.state.store, "other")
    return {"a": live.user_key, "b": other, "admin": live.admin_key}


def key_id(secret: str) -> str:
    return secret.removeprefix("tny_").split("_", 1)[0]


def ask(live, key, question="Where is the printer?"):
    response = call(live, "POST", "/v1/chat/completions", key,
                    {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": question}]})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_every_route_has_an_ownership_rule(live):
    served = {(method, route.path) for route in live.app.routes for method in getattr(route, "methods", ())
              if method != "HEAD"}
    assert served == set(ROUTES)


def test_admin_routes_refuse_a_plain_key(live, keys):
    for (method, path), rule in ROUTES.items():
        if rule == "admin":
            response = call(live, method, re.sub(r"\{[^}]+\}", "x", path), keys["b"], {})
            assert response.status_code == 403, (method, path)


def test_another_keys_completion_answers_404_like_a_missing_one(live, keys):
    mine = ask(live, keys["a"])
    assert call(live, "POST", "/v1/feedback", keys["a"],
                {"completion_id": mine, "rating": 1, "correction": "the real answer"}).status_code == 200
    poison = call(live, "POST", "/v1/feedback", keys["b"],
                  {"completion_id": mine, "rating": -1, "correction": "POISON"})
    missing = call(live, "POST", "/v1/feedback", keys["b"],
                   {"completion_id": "chatcmpl-000000000000000000000000", "rating": -1})
    assert poison.status_code == 404 and poison.json() == missing.json()
    row = live.state.store.query_one("SELECT rating, correction FROM feedback WHERE completion_id = ?", (mine,))
    assert (row["rating"], row["correction"]) == (1, "the real answer")
    corrections = [f.correction for _, f in list_rated_completions(live.state.store, LOCAL_OWNER)]
    assert "POISON" not in corrections and "the real answer" in corrections


def test_store_queries_carry_the_key(live, keys):
    store = live.state.store
    mine = ask(live, keys["a"], "count me")
    a, b = Actor(key_id(keys["a"])), Actor(key_id(keys["b"]))
    assert get_completion(store, a, mine).id == mine
    with pytest.raises(Exception, match="no logged completion"):
        get_completion(store, b, mine)
    assert count_completions(store, b) < count_completions(store, LOCAL_OWNER)
    assert all(c.key_id == b.key_id for c, _ in list_rated_completions(store, b))


def test_feedback_another_key_wrote_before_the_fix_never_reaches_an_export(live, keys, tmp_path):
    mine = ask(live, keys["a"], "an old poisoned row")
    live.state.store.execute(  # a row as the unscoped code used to write it
        "INSERT INTO feedback (completion_id, rating, correction, key_id, created_at, updated_at)"
        " VALUES (?, -1, 'POISON', ?, 'x', 'x')", (mine, key_id(keys["b"])))
    out = tmp_path / "export.jsonl"
    export_feedback(live.state.store, LOCAL_OWNER, out)
    assert "POISON" not in out.read_text()


def test_an_admin_may_rate_any_completion_and_the_audit_says_who(live, keys):
    mine = ask(live, keys["a"], "admin will fix this")
    response = call(live, "POST", "/v1/feedback", keys["admin"],
                    {"completion_id": mine, "rating": -1, "correction": "fixed by the admin"})
    assert response.status_code == 200
    entries = [e for e in list_audit(live.state.store) if e["object_id"] == mine]
    assert entries and entries[0]["actor_key_id"] == key_id(keys["admin"]) and entries[0]["action"] == "feedback.record"
    assert json.loads(entries[0]["detail_json"]) == {}


def test_every_owned_route_answers_another_keys_id_like_a_missing_one(live, keys):
    lines = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}"}]}) + "\n" for i in range(12))
    uploaded = httpx.post(live.url + "/v1/files", headers={"Authorization": f"Bearer {keys['a']}"}, timeout=60,
                          data={"purpose": "fine-tune"}, files={"file": ("train.jsonl", lines.encode())})
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    job = call(live, "POST", "/v1/fine_tuning/jobs", keys["a"], {"model": "tiny", "training_file": file_id})
    assert job.status_code == 200, job.text
    ids = {"{file_id}": (file_id, "file-000000000000000000000000"),
           "{job_id}": (job.json()["id"], "ftjob-000000000000000000000000")}
    for (method, path), rule in ROUTES.items():
        if rule != "owned" or path == "/v1/feedback":  # feedback: see the tests above
            continue
        if "{" not in path:  # a listing: another key's objects are simply not in it
            listing = call(live, method, path, keys["b"])
            assert listing.status_code == 200, (path, listing.text)
            listed = listing.json()["data"]
            assert file_id not in json.dumps(listed) and job.json()["id"] not in json.dumps(listed), path
            continue
        placeholder = next(p for p in ids if p in path)
        theirs, missing = (call(live, method, path.replace(placeholder, value), keys["b"]) for value in ids[placeholder])
        assert theirs.status_code == missing.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["error"]["type"] == missing.json()["error"]["type"], (method, path)
    assert call(live, "GET", f"/v1/files/{file_id}", keys["a"]).status_code == 200  # B deleted nothing
    assert call(live, "GET", f"/v1/fine_tuning/jobs/{job.json()['id']}", keys["a"]).json()["status"] != "cancelled"
