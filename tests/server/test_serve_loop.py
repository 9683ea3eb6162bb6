"""`tunery serve --loop NAME`: the loop watcher runs beside the server, its candidate trains as a job on
the server's own workers, and stopping the server stops the watcher too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tunery
from tests.platform.test_feedback_loop import give_feedback
from tests.server.conftest import free_port
from tunery.config import TrainConfig
from tunery.platform.registry import register_run
from tunery.store import open_store
from tunery.store.registry import alias_history, alias_version


@pytest.mark.timeout(2400)
def test_serve_with_loop_trains_a_candidate_on_its_workers(tiny_model_dir, tmp_path, tunery_home):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is part {i}?"},
                                                     {"role": "assistant", "content": f"Part {i} is TX-{i}."}]}) + "\n"
                            for i in range(12)))
    run = tunery.train(TrainConfig.model_validate({
        "base_model": str(tiny_model_dir), "output_dir": str(tmp_path / "v1"), "data": {"train": str(data),
                                                                                     "val_fraction": 0},
        "train": {"epochs": 1, "batch_size": 4, "precision": "fp32"}}), quiet=True)
    store = open_store()
    register_run(store, run.run_dir, "helpdesk", alias="production")
    give_feedback(store, {f"Question {i}": f"Answer {i}." for i in range(6)})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "tunery", "serve", "--model", str(tiny_model_dir), "--no-auth", "--port",
         str(free_port()), "--dtype", "fp32", "--workers", "1", "--loop", "helpdesk", "--loop-every", "1h",
         "--loop-min-feedback", "3", "--loop-arg=--no-general", "--loop-arg=--set=train.max_steps=2",
         "--loop-arg=--set=train.precision=fp32"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 1800
        while not any(m["actor"] == "loop" and m["action"] == "promote" for m in alias_history(store, "helpdesk")):
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(120)
        log.close()
    output = (tmp_path / "serve.log").read_text()
    assert "feedback loop for helpdesk every 1h" in output
    # The candidate was trained by the server's worker, as a queued job with the loop's metadata.
    job = store.query("SELECT id, status, metadata_json, worker_id FROM jobs")
    assert len(job) == 1 and job[0]["status"] == "succeeded"
    assert json.loads(job[0]["metadata_json"])["tunery_loop"] == "helpdesk"
    assert alias_version(store, "helpdesk", "candidate") == 2
    assert "Fine-tuning job started" in output and "helpdesk: " in output
    history = alias_history(store, "helpdesk")
    assert history[-1]["actor"] == "loop" and history[-1]["outcome"] in ("moved", "refused")
