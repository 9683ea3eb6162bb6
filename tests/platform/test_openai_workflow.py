"""The whole workflow with the official `openai` client over real HTTP, on SQLite and PostgreSQL:
upload, create, follow events, retrieve until succeeded, chat with the new model and a checkpoint;
then the bad-input list, each an OpenAI-shaped 4xx."""

import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
from db_backends import postgres_schema
from platform_data import TINY_TUNERY, chat_lines

from tests.server.conftest import free_port, start_server


@contextmanager
def database_for(backend: str, tmp_path):
    if backend == "sqlite":
        yield str(tmp_path / "tunery.db")
        return
    with postgres_schema() as (url, schema):
        yield f"{url.replace('+psycopg', '')}?options=-csearch_path%3D{schema}"


@pytest.fixture
def platform(backend, tmp_path, tiny_model_dir):
    from tunery.platform.worker import Worker, WorkerSettings
    from tunery.server.settings import ServerSettings
    from tunery.store import create_key, open_store

    with database_for(backend, tmp_path) as database:
        store = open_store(database)
        keys = {name: create_key(store, name)[1] for name in ("alice", "bob")}
        settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", database=database,
                                  port=free_port(), dtype="fp32", default_max_tokens=8, max_upload_mb=0.05)
        app, server, thread = start_server(settings)
        worker = Worker(store, WorkerSettings(heartbeat_s=0.2, poll_s=0.1))
        worker_thread = threading.Thread(target=worker.run_forever, daemon=True)
        worker_thread.start()
        url = f"http://127.0.0.1:{settings.port}/v1"
        yield {name: openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=120)
               for name, key in keys.items()} | {"url": url, "keys": keys}
        worker.stopping.set()
        worker_thread.join(120)
        server.should_exit = True
        thread.join(30)
        store.close()


def wait_for(client, job_id: str, statuses=("succeeded", "failed", "cancelled"), timeout_s: float = 600):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status}")


@pytest.mark.timeout(1800)
def test_the_openai_client_fine_tunes_and_chats_with_the_result(platform):
    alice, bob = platform["alice"], platform["bob"]
    uploaded = alice.files.create(file=("train.jsonl", chat_lines()), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.status == "processed" and uploaded.bytes == len(chat_lines())
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, suffix="helpdesk", seed=7,
                                        metadata={"team": "it"}, extra_body={"tunery": TINY_TUNERY})
    assert job.status == "queued" and job.id.startswith("ftjob-")
    job = wait_for(alice, job.id)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:helpdesk:{job.id.split('-', 1)[1][:8]}"
    assert job.trained_tokens > 0 and job.result_files and job.seed == 7
    messages = [e.message for e in alice.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert messages[0] == "The job has successfully completed" and messages[-1].startswith("Created fine-tuning job")
    checkpoints = alice.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [4, 2]
    csv = alice.files.content(job.result_files[0]).text
    assert csv.splitlines()[0].startswith("step,train_loss,valid_loss")
    assert job.fine_tuned_model in [m.id for m in alice.models.list()]
    assert job.fine_tuned_model not in [m.id for m in bob.models.list()]
    for model in (job.fine_tuned_model, checkpoints[1].fine_tuned_model_checkpoint):
        answer = alice.chat.completions.create(model=model, messages=[{"role": "user", "content": "Ticket 3"}],
                                               max_tokens=4, temperature=0)
        assert answer.model == model and answer.choices[0].finish_reason in ("stop", "length")
    assert [j.id for j in alice.fine_tuning.jobs.list(extra_query={"metadata[team]": "it"})] == [job.id]
    # Another key sees none of it, exactly as if it did not exist.
    for call in (lambda: bob.fine_tuning.jobs.retrieve(job.id), lambda: bob.files.retrieve(uploaded.id),
                 lambda: bob.fine_tuning.jobs.list_events(job.id), lambda: bob.files.content(uploaded.id),
                 lambda: bob.chat.completions.create(model=job.fine_tuned_model,
                                                     messages=[{"role": "user", "content": "hi"}], max_tokens=2)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError, match="cannot be cancelled"):
        alice.fine_tuning.jobs.cancel(job.id)
    assert alice.files.delete(uploaded.id).deleted


def test_bad_input_gets_an_openai_shaped_4xx(platform, tmp_path):
    from tunery.paths import tunery_home

    alice = platform["alice"]
    good = alice.files.create(file=("train.jsonl", chat_lines()), purpose="fine-tune")
    cases = {
        "purpose": lambda: alice.files.create(file=("t.jsonl", chat_lines()), purpose="assistants"),
        "empty": lambda: alice.files.create(file=("t.jsonl", b""), purpose="fine-tune"),
        "suffix": lambda: alice.fine_tuning.jobs.create(model="tiny", training_file=good.id, suffix="../x"),
        "at most 64": lambda: alice.fine_tuning.jobs.create(model="tiny", training_file=good.id, suffix="x" * 65),
        "n_epochs": lambda: alice.fine_tuning.jobs.create(
            model="tiny", training_file=good.id, method={"type": "supervised", "supervised": {
                "hyperparameters": {"n_epochs": 1000}}}),
        "learning_rate_multiplier": lambda: alice.fine_tuning.jobs.create(
            model="tiny", training_file=good.id, method={"type": "supervised", "supervised": {
                "hyperparameters": {"learning_rate_multiplier": "fast"}}}),
        "preference": lambda: alice.fine_tuning.jobs.create(model="tiny", training_file=good.id,
                                                            method={"type": "dpo"}),
        "did you mean 'train.learning_rate'": lambda: alice.fine_tuning.jobs.create(
            model="tiny", training_file=good.id, extra_body={"tunery": {"train": {"lr": 1}}}),
        "not a base model": lambda: alice.fine_tuning.jobs.create(model="/etc", training_file=good.id),
        "does not exist": lambda: alice.fine_tuning.jobs.create(model="tiny", training_file="file-nope"),
    }
    for expected, call in cases.items():
        with pytest.raises(openai.BadRequestError) as caught:
            call()
        body = caught.value.body
        assert expected in body["message"] and "Traceback" not in body["message"], (expected, body)
    bad = alice.files.create(file=("bad.jsonl", chat_lines()[:200] + b"\n{oops\n"), purpose="fine-tune")
    assert bad.status == "error" and "bad.jsonl:" in bad.status_details
    with pytest.raises(openai.BadRequestError, match="failed validation"):
        alice.fine_tuning.jobs.create(model="tiny", training_file=bad.id)
    with pytest.raises(openai.APIStatusError) as too_big:
        alice.files.create(file=("big.jsonl", chat_lines(600)), purpose="fine-tune")
    assert too_big.value.status_code == 413
    def body():  # no content-length: the cap must hold while the bytes stream
        yield b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n\r\n'
        for _ in range(20):
            yield chat_lines(50)
        yield b"\r\n--b--\r\n"

    chunked = httpx.post(platform["url"] + "/files", content=body(), headers={
        "authorization": f"Bearer {platform['keys']['alice']}", "content-type": "multipart/form-data; boundary=b"})
    assert chunked.status_code == 413
    assert not [p for p in (tunery_home() / "files").rglob("*") if p.name.startswith(".upload")]
    with pytest.raises(openai.NotFoundError):
        alice.fine_tuning.jobs.retrieve("ftjob-nope")
