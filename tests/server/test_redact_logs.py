"""`tunery serve --redact-logs`: the request log keeps typed placeholders, the client gets its answer."""

from __future__ import annotations

import json

from tests.server.conftest import free_port, start_server


def test_logged_requests_are_scrubbed(tiny_model_dir, tmp_path):
    from openai import OpenAI

    from tunery.server.settings import ServerSettings
    from tunery.store import create_key, open_store

    db = tmp_path / "tunery.db"
    store = open_store(db)
    _, key = create_key(store, "user")
    patterns = tmp_path / "pii.yaml"
    patterns.write_text("patterns:\n  TICKET: 'TCK-\\d{5}'\n")
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", database=db, port=free_port(),
                              dtype="fp32", default_max_tokens=4, redact_logs=True, pii_patterns=patterns)
    _, server, thread = start_server(settings)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=key)
        question = "Ticket TCK-12345: mail ana@example.com or call +44 20 7946 0958, key sk-abcdefghijklmnop1234"
        answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}])
        assert answer.choices[0].message.content is not None
    finally:
        server.should_exit = True
        thread.join(30)
    rows = store.query("SELECT messages_json FROM completions")
    assert [json.loads(r["messages_json"])[0]["content"] for r in rows] == [
        "Ticket <TICKET_1>: mail <EMAIL_1> or call <PHONE_1>, key <SECRET_1>"]
