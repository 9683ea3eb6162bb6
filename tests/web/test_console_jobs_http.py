"""Datasets and jobs pages over plain HTTP: uploads are checked, jobs are created as the caller, and
one key never sees another key's files or jobs."""

from __future__ import annotations

import json
import re

from tests.platform_data import TINY_TUNERY, chat_lines


def upload(client, csrf, name: str, content: bytes):
    return client.post("/ui/datasets", data={"csrf_token": csrf}, files={"file": (name, content, "application/jsonl")})


def test_upload_create_job_and_owner_only_pages(console):
    alice, alice_csrf = console.signed_in_http(console.user_key)
    uploaded = upload(alice, alice_csrf, "tickets.jsonl", chat_lines(12))
    assert uploaded.status_code == 303
    file_page = alice.get(uploaded.headers["location"])
    assert file_page.status_code == 200 and "passes the checks" in file_page.text
    assert '<mark class="trained">' in file_page.text
    file_id = uploaded.headers["location"].rsplit("/", 1)[1]
    form = {"csrf_token": alice_csrf, "training_file": file_id, "model": "tiny", "method": "lora",
            "suffix": "helpdesk", "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto",
            "tunery_json": json.dumps(TINY_TUNERY)}
    created = alice.post("/ui/jobs", data=form)
    assert created.status_code == 303, created.text
    job_path = created.headers["location"]
    job_page = alice.get(job_path)
    assert job_page.status_code == 200 and 'id="loss-curve"' in job_page.text
    assert "queued" in alice.get("/ui/jobs").text

    from tunery.store import create_key

    admin, _ = console.signed_in_http(console.admin_key)
    _, bob_key = create_key(console.state.store, "bob")
    bob, _ = console.signed_in_http(bob_key)
    assert bob.get(job_path).status_code == 404
    assert bob.get(uploaded.headers["location"]).status_code == 404
    assert file_id not in bob.get("/ui/datasets").text and "helpdesk" not in bob.get("/ui/jobs").text
    assert admin.get(job_path).status_code == 200  # admins see every job


def test_bad_settings_come_back_on_the_form_with_the_field_named(console):
    alice, csrf = console.signed_in_http(console.user_key)
    file_id = upload(alice, csrf, "t.jsonl", chat_lines(12)).headers["location"].rsplit("/", 1)[1]
    base = {"csrf_token": csrf, "training_file": file_id, "model": "tiny", "method": "lora",
            "n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    for extra, expected in (({"n_epochs": "500"}, "n_epochs"), ({"suffix": "a/b"}, "suffix"),
                            ({"tunery_json": '{"lora": {"rnak": 4}}'}, "rank"),
                            ({"tunery_json": "{not json"}, "not valid JSON"),
                            ({"n_epochs": "lots"}, "n_epochs must be &#39;auto&#39; or a number")):
        refused = alice.post("/ui/jobs", data={**base, **extra})
        assert refused.status_code == 400 and expected in refused.text, (extra, refused.text[-2000:])
        assert re.search(r'role="alert"', refused.text)


def test_an_upload_with_errors_shows_its_lines(console):
    alice, csrf = console.signed_in_http(console.user_key)
    bad = chat_lines(3) + b'{"messages": [{"role": "user", "content": "hi"}]}\n'
    result = alice.post("/ui/datasets/check", data={"csrf_token": csrf}, files={"file": ("bad.jsonl", bad, "text/plain")})
    assert result.status_code == 200
    assert re.search(r'<td class="mono">4</td>', result.text) and "no_assistant" in result.text
    assert "add an assistant message" in result.text  # the fix
