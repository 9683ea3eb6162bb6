"""The files and jobs services and one worker, in-process, on both backends."""

import json
from pathlib import Path

import pytest
from platform_data import chat_lines
from webhook_receiver import Receiver

from tunery.errors import ConfigError, NotFoundError
from tunery.platform import jobs
from tunery.platform.files import file_content_path, save_upload
from tunery.platform.webhooks import WebhookSender, verify
from tunery.platform.worker import Worker, WorkerSettings
from tunery.store.owners import LOCAL_OWNER, Actor

ALICE = Actor("alice")


def upload(store, data: bytes, actor=LOCAL_OWNER, name="train.jsonl"):
    return save_upload(store, actor, [data], filename=name, purpose="fine-tune")


def test_a_job_runs_to_an_adapter_with_events_checkpoints_and_a_metrics_file(store, tiny_job):
    file = upload(store, chat_lines())
    assert file["status"] == "processed" and file["examples"] == 12
    job = jobs.create_job(store, LOCAL_OWNER, tiny_job(file["id"]))
    assert job["status"] == "queued" and job["fine_tuned_model"] is None
    receiver = Receiver()
    worker = Worker(store, WorkerSettings(heartbeat_s=0.2), webhooks=WebhookSender(receiver.url, "s3cret"))
    assert worker.run_one()
    worker.webhooks.threads[0].join(30)
    receiver.close()
    (headers, payload), = receiver.deliveries
    assert verify("s3cret", headers, payload)
    assert json.loads(payload)["type"] == "fine_tuning.job.succeeded" and json.loads(payload)["data"]["id"] == job["id"]
    done = jobs.get_job(store, LOCAL_OWNER, job["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["fine_tuned_model"].startswith(f"ft:{Path(job['model']).name}:helpdesk:")
    assert done["trained_tokens"] > 0 and len(done["result_files"]) == 1
    _, csv_path = file_content_path(store, LOCAL_OWNER, done["result_files"][0])
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("step,train_loss,valid_loss") and len(lines) == 5
    events = [e["message"] for e in jobs.list_events(store, LOCAL_OWNER, job["id"], limit=100)["data"]]
    assert events[0] == "The job has successfully completed"
    assert any(m.startswith("Step 4/4: training loss=") for m in events)
    assert "Checkpoint saved at step 2" in events
    steps = [c["step_number"] for c in jobs.list_checkpoints(store, LOCAL_OWNER, job["id"])["data"]]
    assert steps == [4, 2]
    assert not worker.run_one()  # nothing left


def test_bad_requests_are_refused_with_the_field_named(store, tiny_job):
    file = upload(store, chat_lines())
    cases = [({"suffix": "a/b"}, "suffix"), ({"suffix": ".."}, "suffix"), ({"suffix": "x" * 65}, "suffix"),
             ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 0}}}}, "n_epochs"),
             ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "big"}}}},
              "batch_size"),
             ({"method": {"type": "dpo"}}, "preference"), ({"tunery": {"train": {"lr": 0.1}}}, "train.learning_rate"),
             ({"tunery": {"data": {"train": "/etc/passwd"}}}, "set by the job"), ({"model": "no-such-model"}, "not found"),
             ({"tunery": {"data": {"chat_template": "/etc/passwd"}}}, "names a file"),
             ({"tunery": {"data": {"rag": "../../other-team/indexes/kb"}}}, "data.rag names an index folder"),
             ({"training_file": "file-nope"}, "does not exist")]
    for extra, expected in cases:
        with pytest.raises(ConfigError) as caught:
            jobs.create_job(store, LOCAL_OWNER, {**tiny_job(file["id"]), **extra})
        assert expected in str(caught.value), (extra, str(caught.value))


def test_a_bad_file_is_recorded_with_lines_and_refused_for_jobs(store, tiny_job):
    good = chat_lines().splitlines(keepends=True)
    bad = b"".join(good[:3] + [b"{not json\n", b'{"messages": [{"role": "robot", "content": "x"}]}\n'] + good[3:])
    file = upload(store, bad, name="../../etc/bad set.jsonl")
    assert file["status"] == "error" and file["filename"] == "bad set.jsonl"
    assert "bad set.jsonl:4" in file["status_details"] and "bad set.jsonl:5" in file["status_details"]
    with pytest.raises(ConfigError, match="failed validation"):
        jobs.create_job(store, LOCAL_OWNER, tiny_job(file["id"]))
    with pytest.raises(ConfigError, match="empty"):
        upload(store, b"")
    with pytest.raises(ConfigError, match="purpose"):
        save_upload(store, LOCAL_OWNER, [b"x"], filename="a.jsonl", purpose="assistants")
    with pytest.raises(ConfigError, match="upload limit"):
        save_upload(store, LOCAL_OWNER, iter([b"x" * 1024] * 3), filename="a.jsonl", purpose="fine-tune",
                    max_bytes=2048)


def test_another_keys_file_and_job_are_not_found(store, tiny_job):
    file = upload(store, chat_lines(), actor=ALICE)
    bob = Actor("bob")
    with pytest.raises(ConfigError, match="does not exist"):
        jobs.create_job(store, bob, tiny_job(file["id"]))
    job = jobs.create_job(store, ALICE, tiny_job(file["id"]))
    for call in (jobs.get_job, jobs.cancel_job, jobs.pause_job, jobs.resume_job, jobs.list_events,
                 jobs.list_checkpoints):
        with pytest.raises(NotFoundError):
            call(store, bob, job["id"])
    assert jobs.cancel_job(store, ALICE, job["id"])["status"] == "cancelled"
    with pytest.raises(ConfigError, match="cannot be cancelled"):
        jobs.cancel_job(store, ALICE, job["id"])


def test_a_dpo_job_trains_on_pairs_and_registers_a_version(store, tiny_job):
    from tunery.store.registry import list_versions

    pairs = "".join(json.dumps({"input": {"messages": [{"role": "user", "content": f"What is part {i}?"}]},
                                "preferred_output": [{"role": "assistant", "content": f"Part {i} is TX-{i}."}],
                                "non_preferred_output": [{"role": "assistant", "content": f"Part {i} is QZ-{i}."}]})
                    + "\n" for i in range(12)).encode()
    prefs, chat = upload(store, pairs, name="prefs.jsonl"), upload(store, chat_lines())
    with pytest.raises(ConfigError, match="holds preference pairs"):
        jobs.create_job(store, LOCAL_OWNER, tiny_job(prefs["id"]))
    with pytest.raises(ConfigError, match="needs a preference file"):
        jobs.create_job(store, LOCAL_OWNER, tiny_job(chat["id"], method={"type": "dpo"}))
    job = jobs.create_job(store, LOCAL_OWNER, tiny_job(prefs["id"], suffix="prefs", method={
        "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}))
    assert Worker(store, WorkerSettings(heartbeat_s=0.2)).run_one()
    done = jobs.get_job(store, LOCAL_OWNER, job["id"])
    assert done["status"] == "succeeded", done["error"]
    run_dir = Path(jobs.run_dir_of(job["id"]))
    run = json.loads((run_dir / "run.json").read_text())
    assert run["objective"] == "dpo" and run["dpo_beta"] == 0.3
    assert "reward_accuracy" in (run_dir / "metrics.jsonl").read_text()
    (version,) = list_versions(store, "prefs")
    assert version.ref == "prefs@1" and version.job_id == job["id"]
    events = [e["message"] for e in jobs.list_events(store, LOCAL_OWNER, job["id"], limit=100)["data"]]
    assert "Registered as prefs@1" in events
