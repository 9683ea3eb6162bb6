"""Serving follows the registry: NAME means NAME@production, read per request, so promotion needs no restart."""

from __future__ import annotations

import json
import threading

from tests.inference.conftest import save_lora_run
from tests.server.conftest import free_port, start_server


def test_promotion_and_rollback_reach_a_running_server(tiny_model_dir, tmp_path):
    from openai import OpenAI

    from tunery.platform.registry import register_run, rollback
    from tunery.server.settings import ServerSettings
    from tunery.store import create_key, open_store
    from tunery.store import registry as rows

    db = tmp_path / "tunery.db"
    store = open_store(db)
    _, key = create_key(store, "user")
    runs = [save_lora_run(tiny_model_dir, tmp_path / f"run{i}", seed=10 + i) for i in (1, 2)]
    register_run(store, runs[0], "helpdesk", alias="production")
    register_run(store, runs[1], "helpdesk")
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", database=db, port=free_port(),
                              dtype="fp32", default_max_tokens=6)
    _, server, thread = start_server(settings)
    client = OpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=key, max_retries=0)

    def ask(model="helpdesk"):
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Reset VPN"}],
                                                temperature=0, max_tokens=6)
        return answer.model, answer.choices[0].message.content

    try:
        first = ask()
        assert first[0] == "helpdesk@1" and ask("helpdesk@2")[0] == "helpdesk@2"
        assert ask("helpdesk@2")[1] != first[1]  # the two versions really answer differently
        results, errors = [], []

        def client_loop():
            for _ in range(4):
                try:
                    results.append(ask())
                except Exception as exc:  # any failure during the promotion is a test failure
                    errors.append(exc)

        workers = [threading.Thread(target=client_loop) for _ in range(3)]
        for worker in workers:
            worker.start()
        assert rows.move_alias(store, "helpdesk", "production", 2, expected=1, actor="test", action="promote")
        for worker in workers:
            worker.join()
        assert not errors and len(results) == 12
        assert {model for model, _ in results} <= {"helpdesk@1", "helpdesk@2"}
        assert all(text == first[1] for model, text in results if model == "helpdesk@1")
        assert ask() == ("helpdesk@2", ask("helpdesk@2")[1])  # no restart: the new version answers
        rollback(store, "helpdesk")
        assert ask() == first
    finally:
        server.should_exit = True
        thread.join(30)
    logged = {json.loads(r["outputs_json"])[0]: r["model"] for r in store.query("SELECT model, outputs_json FROM completions")}
    assert logged[first[1]] == "helpdesk@1" and set(logged.values()) == {"helpdesk@1", "helpdesk@2"}


def test_admin_registry_routes(tiny_model_dir, tmp_path):
    import httpx

    from tunery.platform.registry import register_run
    from tunery.server.settings import ServerSettings
    from tunery.store import create_key, open_store

    db = tmp_path / "tunery.db"
    store = open_store(db)
    _, admin = create_key(store, "admin", admin=True)
    _, user = create_key(store, "user")
    run = save_lora_run(tiny_model_dir, tmp_path / "run", seed=3)
    register_run(store, run, "desk", alias="production")
    register_run(store, run, "desk")
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", database=db, port=free_port(), dtype="fp32")
    _, server, thread = start_server(settings)
    url = f"http://127.0.0.1:{settings.port}/v1/registry"

    def call(method, path, key=admin, **kwargs):
        return httpx.request(method, url + path, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs)

    try:
        assert call("GET", "/models", key=user).status_code == 403
        listed = call("GET", "/models").json()["data"]
        assert [(v["id"], v["aliases"]) for v in listed] == [("desk@1", ["production"]), ("desk@2", [])]
        moved = call("POST", "/promote", json={"version": "desk@2", "reason": "ops"})
        assert moved.status_code == 200 and moved.json()["to"] == 2
        shown = call("GET", "/models/desk").json()
        assert shown["version"] == "desk@2" and "run_dir" not in shown
        assert shown["history"][-1]["actor"].startswith("key:") and shown["history"][-1]["reason"] == "ops"
        assert call("POST", "/models/desk/rollback", json={}).json()["to"] == 1
        assert call("POST", "/models/desk/rollback", json={}).json()["to"] == 2  # rolls back the rollback
        missing = call("GET", "/models/nope@3")
        assert missing.status_code == 404 and "Traceback" not in missing.text
        assert call("POST", "/promote", json={"version": "bad name"}).status_code == 400
        bad_weights = call("POST", "/promote", json={"version": "desk@1", "tasks": [{"prompt": "a", "reference": "b"}],
                                                     "weights": "int3"})
        assert bad_weights.status_code == 400 and "weights" in bad_weights.text
        unscored = call("POST", "/promote", json={"version": "desk@1", "weights": "int4"})  # no tasks: nothing to score
        assert unscored.status_code == 400 and "weights_without_tasks" in unscored.text
        assert call("GET", "/models/desk").json()["aliases"] == ["production"]  # desk@2 still holds it
    finally:
        server.should_exit = True
        thread.join(30)


def test_http_promotion_runs_the_gates_refuses_with_409_and_the_report_and_force_is_audited(tiny_model_dir,
                                                                                              tmp_path):
    import httpx

    from tunery.platform.registry import describe, register_run, resolve_version
    from tunery.server.settings import ServerSettings
    from tunery.store import create_key, open_store

    db = tmp_path / "tunery.db"
    store = open_store(db)
    _, admin = create_key(store, "admin", admin=True)
    register_run(store, save_lora_run(tiny_model_dir, tmp_path / "run1", seed=1), "desk", alias="production")
    register_run(store, save_lora_run(tiny_model_dir, tmp_path / "run2", seed=2), "desk")
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", database=db, port=free_port(), dtype="fp32")
    _, server, thread = start_server(settings)
    tasks = [{"prompt": f"Say {word}", "reference": word} for word in ("yes", "no", "ok")]

    def promote(**body):
        return httpx.post(f"http://127.0.0.1:{settings.port}/v1/registry/promote", json={"version": "desk@2", **body},
                          headers={"Authorization": f"Bearer {admin}"}, timeout=600)

    try:
        refused = promote(tasks=tasks, gates=["exact_match>=2"])
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["error"]["code"] == "gate_failed" and body["error"]["type"] == "conflict_error"
        assert body["gate"]["passed"] is False and body["gate"]["baseline"] == "desk@1"
        assert [g["rule"] for g in body["gate"]["gates"]] == ["exact_match>=2"]
        assert str(tmp_path) not in refused.text and "/tmp" not in refused.text  # no server paths
        assert resolve_version(store, "desk").version == 1
        assert promote(tasks=tasks, gates=["exact_match>=2"], force=True).status_code == 400  # force needs a reason
        forced = promote(tasks=tasks, gates=["exact_match>=2"], force=True, reason="ops approved")
        assert forced.status_code == 200 and forced.json()["gate"]["passed"] is False
        assert resolve_version(store, "desk").version == 2
        history = describe(store, "desk")["history"]
        assert [(m["action"], m["outcome"]) for m in history] == [("register", "moved"), ("promote", "refused"),
                                                                   ("promote", "moved")]
        assert history[1]["actor"] == history[2]["actor"] and history[1]["actor"].startswith("key:")
        assert history[2]["reason"] == "ops approved" and history[2]["gate"]["passed"] is False
        # The CLI's gates, refused the same way: a task row the evaluation cannot read is a 400, not a move.
        assert promote(version="desk@1", tasks=[{"nothing": 1}]).status_code == 400
    finally:
        server.should_exit = True
        thread.join(30)
