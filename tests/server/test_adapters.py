"""Which runs the admin route accepts: known, completed, adapter runs trained on the served base."""

from __future__ import annotations

import json
import shutil

import openai
import pytest

from tests.conftest import build_tiny_model
from tests.inference.conftest import save_lora_run
from tunery.paths import runs_dir


def test_runs_under_the_runs_dir_load_by_name_and_bad_runs_are_refused(live, adapter_run, tmp_path):
    admin = live.client(key=live.admin_key)
    shutil.copytree(adapter_run, runs_dir() / "by-name")
    admin.post("/adapters", body={"name": "by-name", "run": "by-name"}, cast_to=object)
    assert "by-name" in [m.id for m in live.client().models.list().data]
    admin.delete("/adapters/by-name", cast_to=object)

    running = shutil.copytree(adapter_run, runs_dir() / "still-running")
    (running / "run.json").write_text(json.dumps({"status": "running", "lineage": {"base_model": "x"}}))
    with pytest.raises(openai.BadRequestError, match="not completed"):
        admin.post("/adapters", body={"name": "r", "run": "still-running"}, cast_to=object)

    other_base = build_tiny_model(tmp_path / "other-base", seed=7)
    save_lora_run(other_base, runs_dir() / "other", seed=4)
    with pytest.raises(openai.BadRequestError) as wrong_base:
        admin.post("/adapters", body={"name": "o", "run": "other"}, cast_to=object)
    assert wrong_base.value.body["code"] == "adapter_mismatch"
    assert str(tmp_path) not in wrong_base.value.response.text


def test_serving_a_lora_run_as_the_model(adapter_run, tiny_model_dir, tmp_path):
    from fastapi.testclient import TestClient

    from tunery.server.app import create_app
    from tunery.server.settings import ServerSettings

    settings = ServerSettings(model=str(adapter_run), no_auth=True, database=tmp_path / "t.db", dtype="fp32")
    with TestClient(create_app(settings)) as client:
        models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        assert set(models) == {tiny_model_dir.name, adapter_run.name}
        assert models[adapter_run.name]["parent"] == tiny_model_dir.name
