"""The console's sign-in, session cookie, CSRF and admin rules over plain HTTP (no browser needed)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from tests.web.conftest import csrf_of


def test_pages_need_a_session(console):
    with console.http() as client:
        for path in ("/ui/", "/ui/playground", "/ui/keys"):
            response = client.get(path)
            assert response.status_code == 303 and response.headers["location"] == "/ui/login", path
        script = client.post("/ui/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
                             headers={"Accept": "application/json"})
        assert script.status_code == 401


def test_sign_in_sets_a_strict_httponly_cookie_and_no_key_in_it(console):
    with console.http() as client:
        form = client.get("/ui/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        response = client.post("/ui/login", data={"api_key": console.user_key, "csrf_token": csrf_of(form.text)})
        assert response.status_code == 303
        cookie = next(v for k, v in response.headers.multi_items()
                      if k == "set-cookie" and v.startswith("tunery_session="))
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert "httponly" in flags and "samesite=strict" in flags and "path=/ui" in flags
        assert console.user_key not in cookie and console.user_key.split("_", 2)[2] not in cookie  # the whole secret (it may hold "_")
        assert client.get("/ui/playground").status_code == 200
        assert "Content-Security-Policy" in client.get("/ui/playground").headers


def test_wrong_key_and_missing_login_token_are_refused(console):
    with console.http() as client:
        form = client.get("/ui/login")
        wrong = client.post("/ui/login", data={"api_key": "tny_nope_nope", "csrf_token": csrf_of(form.text)})
        assert wrong.status_code == 401 and "not valid" in wrong.text and "tny_nope" not in wrong.text
        no_token = client.post("/ui/login", data={"api_key": console.user_key})
        assert no_token.status_code == 403 and "tunery_session" not in no_token.headers.get("set-cookie", "")


def test_forms_without_the_csrf_token_are_refused(console):
    client, csrf = console.signed_in_http(console.admin_key)
    refused = client.post("/ui/keys", data={"name": "sneaky"})
    assert refused.status_code == 403 and "security token" in refused.text
    forged = client.post("/ui/keys", data={"name": "sneaky", "csrf_token": csrf[:-2] + "xx"})
    assert forged.status_code == 403
    assert "sneaky" not in client.get("/ui/keys").text
    created = client.post("/ui/keys", data={"name": "by-form", "csrf_token": csrf})
    assert created.status_code == 200 and "by-form" in created.text and "tny_" in created.text
    chat = client.post("/ui/api/chat", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Accept": "application/json"})
    assert chat.status_code == 403


def test_a_token_from_another_session_is_refused(console):
    alice, alice_csrf = console.signed_in_http(console.user_key)
    admin, _ = console.signed_in_http(console.admin_key)
    assert admin.post("/ui/keys", data={"name": "x", "csrf_token": alice_csrf}).status_code == 403


def test_non_admin_keys_are_refused_admin_pages(console):
    client, csrf = console.signed_in_http(console.user_key)
    page = client.get("/ui/keys")
    assert page.status_code == 403 and "admin key" in page.text
    assert client.post("/ui/keys", data={"name": "x", "admin": "true", "csrf_token": csrf}).status_code == 403
    assert ">Keys<" not in client.get("/ui/playground").text


def test_revoking_a_key_ends_its_sessions(console):
    from tunery.store import create_key

    record, secret = create_key(console.state.store, "short-lived")
    client, _ = console.signed_in_http(secret)
    admin, admin_csrf = console.signed_in_http(console.admin_key)
    assert client.get("/ui/playground").status_code == 200
    revoked = admin.post(f"/ui/keys/{record.id}/revoke", data={"csrf_token": admin_csrf})
    assert revoked.status_code == 303
    assert client.get("/ui/playground").status_code == 303


def test_one_time_link_signs_in_once(console, monkeypatch):
    from tunery.cli import _register, app

    monkeypatch.setenv("TUNERY_HOME", str(console.state.settings.database.parent))  # the server's database
    _register()
    result = CliRunner().invoke(app, ["ui-login", "--key-id", console.user_key_id, "--url", console.url + "/v1"])
    assert result.exit_code == 0, result.output
    link = result.stdout.strip().splitlines()[-1]
    assert link.startswith(console.url + "/ui/login/")
    path = link[len(console.url):]
    with console.http() as first, console.http() as second:
        assert first.get(path).status_code == 303
        assert first.get("/ui/playground").status_code == 200
        again = second.get(path)
        assert again.status_code == 404 and "used or expired" in again.text
        assert second.get("/ui/playground").status_code == 303


@pytest.mark.parametrize("key_id", [None])
def test_ui_login_creates_an_admin_key_only_when_none_exists(tunery_home, key_id):
    from tunery.store import list_keys, open_store
    from tunery.web.session import login_link_key

    store = open_store()
    key, created = login_link_key(store, key_id)
    assert created and key.admin and key.name == "console"
    again, created_again = login_link_key(store, key_id)
    assert again.id == key.id and not created_again
    assert len(list_keys(store)) == 1


def test_static_assets_are_served_by_tunery(console):
    with console.http() as client:
        for asset in ("vendor/htmx-2.0.11.min.js", "vendor/uPlot-1.6.32.iife.min.js", "console.js", "console.css"):
            response = client.get(f"/ui/static/{asset}")
            assert response.status_code == 200 and len(response.content) > 1000, asset


def test_feedback_review_page_is_admin_only_scrubbed_and_approves(console):
    from tunery.store.feedback_reviews import review_queue
    from tunery.store.owners import Actor
    from tunery.store.requests import LoggedCompletion, log_completion, record_feedback

    entry = LoggedCompletion(id="chatcmpl-review-1", model="tiny", kind="chat",
                             messages=[{"role": "user", "content": "reset my VPN, I am bob@example.com"}],
                             outputs=["call 555-0100"], finish_reason="stop", prompt_tokens=3, completion_tokens=2,
                             latency_ms=5, key_id=console.user_key_id)
    log_completion(console.state.store, entry)
    record_feedback(console.state.store, Actor(console.user_key_id), entry.id, -1, "Use the portal, bob@example.com")
    alice, alice_csrf = console.signed_in_http(console.user_key)
    assert alice.get("/ui/feedback").status_code == 403
    admin, csrf = console.signed_in_http(console.admin_key)
    page = admin.get("/ui/feedback")
    assert page.status_code == 200 and "chatcmpl-review-1" in page.text
    assert "bob@example.com" not in page.text and "&lt;EMAIL_1&gt;" in page.text  # scrubbed, one placeholder
    assert alice.post(f"/ui/feedback/{entry.id}", data={"decision": "approved", "csrf_token": alice_csrf}).status_code == 403
    done = admin.post(f"/ui/feedback/{entry.id}", data={"decision": "approved", "correction": "Use the portal.",
                                                         "csrf_token": csrf})
    assert done.status_code == 200 and "approved" in done.text
    approved = review_queue(console.state.store, Actor(None, admin=True), "approved")
    assert [(i.completion.id, i.review.correction) for i in approved] == [(entry.id, "Use the portal.")]


def test_models_page_lists_versions_and_embeds_an_attached_report(console, tmp_path):
    from tunery.store import registry as rows

    report = tmp_path / "compare" / "report.html"
    report.parent.mkdir()
    report.write_text("<html><body><h1>base vs tuned</h1></body></html>")
    version = rows.insert_version(console.state.store, "reports-demo", run_dir=str(tmp_path), base_model="tiny",
                                  lineage={}, created_by="test")
    rows.attach_report(console.state.store, "reports-demo", version.version,
                       {"kind": "loop", "gate": {"comparisons": [{"report": str(report)}]}})
    alice, _ = console.signed_in_http(console.user_key)
    page = alice.get("/ui/models")
    assert page.status_code == 200 and "reports-demo@1" in page.text
    assert "Check and promote" not in page.text  # promotion is for admins
    shown = alice.get(f"/ui/models/reports-demo/{version.version}/report/0")
    assert shown.status_code == 200 and "base vs tuned" in shown.text
    assert alice.get(f"/ui/models/reports-demo/{version.version}/report/1").status_code == 404
