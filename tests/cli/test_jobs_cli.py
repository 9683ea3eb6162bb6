"""`tunery files ...` and `tunery jobs ...` on the local store, and against a server over TUNERY_URL."""

from __future__ import annotations

import json

from platform_data import chat_lines
from typer.testing import CliRunner

from tunery.cli import _register, app

_register()
runner = CliRunner()


def test_files_and_jobs_on_the_local_store(tmp_path, tiny_model_dir, monkeypatch):
    from tunery.platform.worker import Worker, WorkerSettings
    from tunery.store import open_store

    monkeypatch.delenv("TUNERY_URL", raising=False)
    monkeypatch.delenv("TUNERY_DATABASE_URL", raising=False)
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_lines())
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": []}\n' * 12)
    refused = runner.invoke(app, ["files", "upload", str(bad)])
    assert refused.exit_code == 1 and "bad.jsonl:1" in refused.output
    created = runner.invoke(app, ["jobs", "create", str(data), "--model", str(tiny_model_dir), "--suffix", "cli",
                                  "--set", "train.max_steps=2", "--set", "train.threads=1",
                                  "--set", "data.max_seq_len=64", "--json"])
    assert created.exit_code == 0, created.output
    job = json.loads(created.stdout)
    typo = runner.invoke(app, ["jobs", "create", str(data), "--model", str(tiny_model_dir), "--set", "train.lr=1"])
    assert typo.exit_code == 2 and "train.learning_rate" in typo.output and "Traceback" not in typo.output
    assert Worker(open_store(), WorkerSettings(heartbeat_s=0.2)).run_one()
    followed = runner.invoke(app, ["jobs", "events", job["id"], "--follow"])
    assert followed.exit_code == 0 and "The job has successfully completed" in followed.output
    assert f"{job['id']} succeeded: ft:{tiny_model_dir.name}:cli:" in followed.output.replace("\n", "")
    listed = json.loads(runner.invoke(app, ["jobs", "list", "--json"]).stdout)
    assert [(j["id"], j["status"]) for j in listed["data"]] == [(job["id"], "succeeded")]
    cancel = runner.invoke(app, ["jobs", "cancel", job["id"]])
    assert cancel.exit_code == 2 and "cannot be cancelled" in cancel.output
    missing = runner.invoke(app, ["jobs", "show", "ftjob-nope"])
    assert missing.exit_code == 1 and "no fine-tuning job" in missing.output
    files = json.loads(runner.invoke(app, ["files", "list", "--json"]).stdout)
    assert {f["filename"] for f in files} >= {"train.jsonl", "bad.jsonl"}


def test_a_refused_job_leaves_no_upload_behind(tmp_path, tiny_model_dir, monkeypatch):
    """Files `jobs create` uploaded for a job it could not create are removed; files given by id stay."""
    monkeypatch.delenv("TUNERY_URL", raising=False)
    monkeypatch.delenv("TUNERY_DATABASE_URL", raising=False)
    data = tmp_path / "train.jsonl"
    data.write_bytes(chat_lines())
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"messages": []}\n' * 12)

    def files() -> list[dict]:
        listed = runner.invoke(app, ["files", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        return json.loads(listed.stdout)

    kept = json.loads(runner.invoke(app, ["files", "upload", str(data), "--json"]).stdout)
    refused = runner.invoke(app, ["jobs", "create", str(bad), "--model", str(tiny_model_dir)])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "removed the upload" in refused.output
    both = runner.invoke(app, ["jobs", "create", str(data), "--model", str(tiny_model_dir),
                               "--validation-file", str(bad)])
    assert both.exit_code != 0 and both.output.count("removed the upload") == 2
    by_id = runner.invoke(app, ["jobs", "create", kept["id"], "--model", "no-such-model-anywhere"])
    assert by_id.exit_code != 0 and "removed the upload" not in by_id.output
    assert [f["id"] for f in files()] == [kept["id"]]
    created = runner.invoke(app, ["jobs", "create", str(data), "--model", str(tiny_model_dir), "--json"])
    assert created.exit_code == 0, created.output
    assert len(files()) == 2
