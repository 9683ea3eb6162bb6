"""`tunery feedback export` never overwrites without --overwrite, refuses folders, leaves no temp
file, and writes owner-only files (they hold users' prompts and answers)."""

from __future__ import annotations

import json
import stat

from typer.testing import CliRunner

from tunery.cli import _register, app
from tunery.store import open_store
from tunery.store.owners import LOCAL_OWNER
from tunery.store.requests import LoggedCompletion, log_completion, record_feedback

_register()


def rated_store():
    store = open_store()
    log_completion(store, LoggedCompletion(id="c0", model="tiny", kind="chat", messages=[{"role": "user", "content": "q"}],
                                           outputs=["a"], finish_reason="stop", prompt_tokens=1, completion_tokens=1,
                                           latency_ms=1))
    record_feedback(store, LOCAL_OWNER, "c0", 1)
    store.close()


def test_an_existing_file_is_kept_unless_overwrite(tmp_path):
    rated_store()
    out = tmp_path / "mine.jsonl"
    out.write_text("my own data\n")
    refused = CliRunner().invoke(app, ["feedback", "export", "--out", str(out)])
    assert refused.exit_code == 2 and "already exists" in refused.output and "--overwrite" in refused.output
    assert out.read_text() == "my own data\n"
    replaced = CliRunner().invoke(app, ["feedback", "export", "--out", str(out), "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(out.read_text())["messages"][-1]["content"] == "a"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_a_folder_as_out_is_a_clear_error_and_leaves_no_temp_file(tmp_path):
    rated_store()
    folder = tmp_path / "exports"
    folder.mkdir()
    result = CliRunner().invoke(app, ["feedback", "export", "--out", str(folder), "--overwrite"])
    assert result.exit_code == 2 and "target_is_folder" in result.output
    assert list(tmp_path.rglob("*.tmp")) == [] and list(folder.iterdir()) == []


def test_existing_pairs_file_is_kept_too(tmp_path):
    rated_store()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("keep\n")
    result = CliRunner().invoke(app, ["feedback", "export", "--out", str(tmp_path / "new.jsonl"), "--pairs", str(pairs)])
    assert result.exit_code == 2 and pairs.read_text() == "keep\n" and not (tmp_path / "new.jsonl").exists()


def test_pairs_to_the_out_file_is_refused_before_anything_is_written(tmp_path):
    rated_store()
    same = tmp_path / "both.jsonl"
    result = CliRunner().invoke(app, ["feedback", "export", "--out", str(same), "--pairs", str(tmp_path / "." / "both.jsonl")])
    assert result.exit_code == 2 and "same_target" in result.output and not same.exists(), result.output
