"""Nothing overwritten, nothing run twice: the output_dir policy and the run lock."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import tunery
from tests.training.test_cli import write_dataset
from tunery.cli import _register, app
from tunery.errors import ConfigError, TrainingError
from tunery.training.runlock import RunLock, lock_holder, read_lock

_register()
runner = CliRunner()
ROOT = Path(__file__).parents[2]


def interrupt_at(step: int):
    def on_event(event):
        if event["type"] == "train" and event["step"] == step:
            os.kill(os.getpid(), signal.SIGTERM)  # the loop finishes the step, checkpoints and stops
    return on_event


def test_output_dir_with_the_users_files_is_refused_and_untouched(make_config, conversations, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "metrics.jsonl").write_text("my own metrics\n")
    (out / "tokenizer.json").write_text("{\"mine\": true}")
    with pytest.raises(ConfigError) as info:
        tunery.train(make_config("mine"), train_conversations=conversations, quiet=True)
    assert info.value.code == "output_dir_not_empty" and str(out) in info.value.message
    assert "--overwrite" in info.value.hint
    # --overwrite never replaces a file tunery did not write
    with pytest.raises(ConfigError) as info:
        tunery.train(make_config("mine"), overwrite=True, train_conversations=conversations, quiet=True)
    assert info.value.code == "output_dir_conflict" and "metrics.jsonl" in info.value.message
    assert (out / "metrics.jsonl").read_text() == "my own metrics\n"
    assert (out / "tokenizer.json").read_text() == "{\"mine\": true}"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "tokenizer.json"]  # no lock left behind


def test_overwrite_writes_beside_the_users_files(make_config, conversations, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    messages = []

    class Collect(tunery.training.progress.Reporter):
        def message(self, text):
            messages.append(text)

    result = tunery.train(make_config("notes", train={"max_steps": 2}), overwrite=True,
                          train_conversations=conversations, reporter=Collect())
    assert result.status == "completed" and (out / "adapter").is_dir()
    assert (out / "notes.txt").read_text() == "keep me"
    assert any("keeping 1 file(s)" in m and "notes.txt" in m for m in messages)


def test_overwrite_replaces_an_earlier_run_but_only_its_own_files(make_config, conversations, tmp_path):
    config = make_config("again", train={"max_steps": 3, "save_every_steps": 1})
    tunery.train(config, train_conversations=conversations, quiet=True)
    out = Path(config.output_dir)
    (out / "my-eval.txt").write_text("mine")
    with pytest.raises(ConfigError) as info:
        tunery.train(config, train_conversations=conversations, quiet=True)
    assert info.value.code == "run_exists" and "--resume" in info.value.hint and "--overwrite" in info.value.hint
    shorter = make_config("again", train={"max_steps": 1, "save_every_steps": 1})
    result = tunery.train(shorter, overwrite=True, train_conversations=conversations, quiet=True)
    assert result.steps == 1 and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]
    events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(e.get("step", 0) for e in events) == 1  # the earlier run's metrics are gone
    assert (out / "my-eval.txt").read_text() == "mine"


def test_cli_names_the_folder_and_the_flag_without_a_traceback(tmp_path, tiny_model_dir):
    write_dataset(tmp_path / "train.jsonl")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"base_model": str(tiny_model_dir), "method": "lora",
                                      "data": {"train": "train.jsonl", "val_fraction": 0.0},
                                      "train": {"epochs": 1, "batch_size": 4, "precision": "fp32"}}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "paper.md").write_text("draft")
    result = runner.invoke(app, ["train", str(config), f"output_dir={out}", "--quiet"])
    assert result.exit_code == 2 and "output_dir_not_empty" in result.output and "--overwrite" in result.output
    assert str(out) in result.output.replace("\n", "") and "Traceback" not in result.output
    result = runner.invoke(app, ["train", str(config), f"output_dir={out}", "train.max_steps=1", "--quiet",
                                 "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "paper.md").read_text() == "draft" and (out / "adapter").is_dir()


def test_a_second_resume_of_a_run_in_progress_is_refused(make_config, conversations):
    config = make_config("busy", train={"epochs": 3, "save_every_steps": 2})
    first = tunery.train(config, train_conversations=conversations, quiet=True, on_event=interrupt_at(2))
    run_dir = first.run_dir
    seen = {}

    def second_trainer(event):
        if event["type"] == "train" and event["step"] == 3 and "cli" not in seen:
            seen["lock"] = read_lock(run_dir)
            seen["inproc"] = pytest.raises(TrainingError, tunery.train, resume=run_dir, quiet=True)
            seen["cli"] = subprocess.run([sys.executable, "-m", "tunery", "train", "--resume", str(run_dir)],
                                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                         capture_output=True, text=True, timeout=300)

    resumed = tunery.train(resume=run_dir, train_conversations=conversations, quiet=True, on_event=second_trainer)
    assert resumed.status == "completed"
    assert seen["lock"]["pid"] == os.getpid() and seen["lock"]["host"] == socket.gethostname()
    assert seen["inproc"].value.code == "run_locked"
    cli = seen["cli"]
    assert cli.returncode == 1 and "run_locked" in cli.stderr and "Traceback" not in cli.stderr
    assert f"process {os.getpid()} on {socket.gethostname()}" in " ".join(cli.stderr.split())
    assert lock_holder(run_dir) is None and not (run_dir / "run.lock").exists()  # released at the end


def test_a_stale_lock_is_taken_over_and_another_hosts_lock_is_respected(make_config, conversations):
    config = make_config("stale", train={"epochs": 3, "save_every_steps": 2})
    run_dir = tunery.train(config, train_conversations=conversations, quiet=True, on_event=interrupt_at(2)).run_dir
    elsewhere = {"pid": 4242, "host": "gpu-node-7", "started_at": "2026-12-02T10:00:00Z"}
    (run_dir / "run.lock").write_text(json.dumps(elsewhere))
    with pytest.raises(TrainingError) as info:
        tunery.train(resume=run_dir, train_conversations=conversations, quiet=True)
    assert info.value.code == "run_locked" and "process 4242 on gpu-node-7" in info.value.message
    assert str(run_dir / "run.lock") in info.value.hint
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that was ours and is dead: what a SIGKILLed trainer leaves
    (run_dir / "run.lock").write_text(json.dumps({**elsewhere, "pid": gone.pid, "host": socket.gethostname()}))
    assert lock_holder(run_dir) is None
    assert tunery.train(resume=run_dir, train_conversations=conversations, quiet=True).status == "completed"
    assert not (run_dir / "run.lock").exists()


def test_the_lock_is_created_exclusively_and_owner_only(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        assert (lock.path.stat().st_mode & 0o777) == 0o600
        record = read_lock(tmp_path / "run")
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname() and record["started_at"]
        with pytest.raises(TrainingError) as info:  # a second holder in the same process (another thread)
            RunLock(tmp_path / "run").acquire()
        assert "this process" in info.value.message
    assert not (tmp_path / "run").exists()  # created for the lock, nothing written: removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        RunLock(tmp_path / "file").acquire()


def test_a_zombie_holder_is_dead():
    from tunery.host import process_alive

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie, as a trainer
    assert not process_alive(child.pid)  # killed with its worker stays where PID 1 does not reap
    child.wait()
    assert process_alive(os.getpid())
