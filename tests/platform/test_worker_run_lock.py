"""A worker respects the run lock: a job whose run another live trainer holds is not trained twice."""

import json
import socket
import subprocess
import sys

import pytest
from platform_data import chat_lines

from tunery.platform import jobs
from tunery.platform.files import save_upload
from tunery.platform.worker import Worker, WorkerSettings
from tunery.store.owners import LOCAL_OWNER


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_job_whose_run_is_held_by_a_live_trainer_fails_naming_it(store, tiny_job):
    file = save_upload(store, LOCAL_OWNER, [chat_lines()], filename="t.jsonl", purpose="fine-tune")
    job = jobs.create_job(store, LOCAL_OWNER, tiny_job(file["id"]))
    run_dir = jobs.run_dir_of(job["id"])
    run_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (run_dir / "run.lock").write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                      "started_at": "2026-12-02T10:00:00Z"}))
        assert Worker(store, WorkerSettings(heartbeat_s=0.2, lease_s=1.0)).run_one()
    finally:
        holder.kill()
        holder.wait()
    done = jobs.get_job(store, LOCAL_OWNER, job["id"])
    assert done["status"] == "failed" and done["error"]["code"] == "run_locked"
    assert f"process {holder.pid} on {socket.gethostname()}" in done["error"]["message"]
    assert not (run_dir / "run.json").exists()  # nothing was trained into the held run
