"""Request → feedback → export → `tunery data check`, and the feedback route's rules."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from tunery.cli import _register, app
from tunery.store.feedback_export import export_feedback
from tunery.store.owners import LOCAL_OWNER

QUESTIONS = ["hi", "Please reset my VPN token", "What is the capital of France?", "Outlook keeps crashing",
             "Part number TX-4410", "The queue is stuck", "since Monday", "floor three printer",
             "shared calendars", "model 7 rack fan", "cannot log in from home", "JSON only please",
             "network priority", "netops team"]


def post_feedback(live, body, key=None):
    return httpx.post(live.url + "/v1/feedback", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key or live.user_key}"})


def test_round_trip_request_feedback_export_check(live, tmp_path):
    client = live.client()
    ids = {}
    for i, question in enumerate(QUESTIONS):
        model = "support" if i % 2 else "tiny"
        result = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                max_tokens=6, temperature=1.0, seed=i)
        ids[question] = result.id
    ratings = {q: (1, None) for q in QUESTIONS[:6]}
    ratings.update({q: (-1, f"Corrected answer {i}") for i, q in enumerate(QUESTIONS[6:12])})
    ratings.update({q: (-1, None) for q in QUESTIONS[12:]})
    for question, (rating, correction) in ratings.items():
        body = {"completion_id": ids[question], "rating": -rating}  # first the opposite, then the final say
        assert post_feedback(live, body).status_code == 200
        response = post_feedback(live, {"completion_id": ids[question], "rating": rating, "correction": correction})
        assert response.status_code == 200 and response.json()["rating"] == rating
    out, pairs = tmp_path / "feedback.jsonl", tmp_path / "pairs.jsonl"
    summary = export_feedback(live.state.store, LOCAL_OWNER, out, pairs_out=pairs)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_question = {r["messages"][0]["content"]: r["messages"][-1]["content"] for r in rows}
    logged = {q: live.state.store.query_one("SELECT outputs_json FROM completions WHERE id = ?", (ids[q],))
              for q in QUESTIONS}
    for question, (rating, correction) in ratings.items():
        if correction:
            assert by_question[question] == correction
        elif rating == 1 and json.loads(logged[question][0])[0].strip():
            assert by_question[question] == json.loads(logged[question][0])[0]
        else:
            assert question not in by_question
    assert summary.pairs == 6 and len(pairs.read_text().splitlines()) == 6
    _register()
    result = CliRunner().invoke(app, ["data", "check", str(out)])
    assert result.exit_code == 0, result.output


def test_feedback_rules(live):
    missing = post_feedback(live, {"completion_id": "chatcmpl-unknown", "rating": 1})
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert post_feedback(live, {"completion_id": "x", "rating": 0}).status_code == 400
    assert post_feedback(live, {"completion_id": "x", "rating": 1}, key="tny_bad").status_code == 401


@pytest.fixture
def home_store():
    from tunery.store import open_store

    store = open_store()
    yield store
    store.close()


def test_cli_keys_and_feedback_export(home_store, tmp_path):
    from tunery.store import verify_key
    from tunery.store.requests import LoggedCompletion, log_completion, record_feedback

    _register()
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--name", "ops", "--admin"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    key = verify_key(home_store, secret)
    assert key is not None and key.admin
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert secret not in listed.stdout and key.id in listed.stdout
    assert runner.invoke(app, ["keys", "revoke", key.id]).exit_code == 0
    assert verify_key(home_store, secret) is None
    assert runner.invoke(app, ["keys", "revoke", "nope"]).exit_code == 1

    for i in range(3):
        log_completion(home_store, LoggedCompletion(
            id=f"c{i}", model="tiny", kind="chat", messages=[{"role": "user", "content": f"q{i}"}],
            outputs=[f"a{i}"], finish_reason="stop", prompt_tokens=3, completion_tokens=2, latency_ms=1))
    record_feedback(home_store, LOCAL_OWNER, "c0", 1)
    record_feedback(home_store, LOCAL_OWNER, "c1", -1, correction="better")
    out, pairs = tmp_path / "fb.jsonl", tmp_path / "p.jsonl"
    result = runner.invoke(app, ["feedback", "export", "--out", str(out), "--model", "tiny", "--pairs", str(pairs)])
    # Two examples: `data check` refuses the file (too few to fine-tune on), and so does the export's own check;
    # the export itself succeeded, so the command exits 0 with that verdict.
    assert [json.loads(x)["messages"][-1]["content"] for x in out.read_text().splitlines()] == ["a0", "better"]
    assert result.exit_code == 0 and f"data check FAILS on {out}" in result.stdout
    assert "too_few_examples" in result.stdout
    assert runner.invoke(app, ["data", "check", str(out)]).exit_code == 1
    for i in range(3, 13):
        log_completion(home_store, LoggedCompletion(
            id=f"c{i}", model="tiny", kind="chat", messages=[{"role": "user", "content": f"q{i}"}],
            outputs=[f"a{i}"], finish_reason="stop", prompt_tokens=3, completion_tokens=2, latency_ms=1))
        record_feedback(home_store, LOCAL_OWNER, f"c{i}", 1)
    result = runner.invoke(app, ["feedback", "export", "--out", str(out), "--model", "tiny", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert f"data check passes on {out}" in result.stdout
    assert runner.invoke(app, ["data", "check", str(out)]).exit_code == 0
    bad_since = runner.invoke(app, ["feedback", "export", "--out", str(out), "--since", "soon"])
    assert bad_since.exit_code == 2 and "since" in bad_since.output


def test_no_auth_is_refused_off_loopback():
    _register()
    result = CliRunner().invoke(app, ["serve", "--no-auth", "--host", "0.0.0.0"])
    assert result.exit_code == 2 and "loopback" in result.output


def test_no_log_keeps_nothing_and_feedback_has_nothing_to_refer_to(tiny_model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from tunery.server.app import create_app
    from tunery.server.settings import ServerSettings

    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", no_auth=True, no_log=True,
                              database=tmp_path / "t.db", dtype="fp32")
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/chat/completions", json={"model": "tiny", "max_tokens": 3,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        assert answer.status_code == 200
        assert client.app.state.tunery.store.query("SELECT * FROM completions") == []
        feedback = client.post("/v1/feedback", json={"completion_id": answer.json()["id"], "rating": 1})
        assert feedback.status_code == 404
