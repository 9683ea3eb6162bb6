"""The whole circle on the default model, through a running server and the official `openai` client:
serve helpdesk@1; ask questions it answers wrongly; post corrections to /v1/feedback; run the loop
(the candidate trains as a job a worker claims, is gated, promoted); the same server, never restarted,
now answers the corrected questions it trained on with the corrected facts; `tunery models rollback`
brings the old answers back.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from typer.testing import CliRunner

import tunery
from tests.server.conftest import free_port, start_server
from tunery.cli import _register, app
from tunery.config import TrainConfig
from tunery.evaluation.metrics import score_contains
from tunery.platform import jobs
from tunery.platform.feedback_loop import run_loop
from tunery.platform.registry import register_run, resolve_version
from tunery.platform.worker import Worker, WorkerSettings
from tunery.store import create_key, open_store
from tunery.store.owners import LOCAL_OWNER

pytestmark = pytest.mark.slow
FACTS = {"What is the code name of project Alder?": "Project Alder is code-named Bluefin.",
         "Which floor is the Kestrel lab on?": "The Kestrel lab is on floor 14.",
         "Who approves travel for the Orion team?": "Travel for the Orion team is approved by Dana Whitlock.",
         "What is the wifi network in building C?": "The wifi network in building C is TEAL-NET-7.",
         "What port does the Falcon service listen on?": "The Falcon service listens on port 8123.",
         "Which printer is on the Heron floor?": "The Heron floor printer is called PR-Heron-2."}
# Small and quick on two cores: a rank-8 LoRA continued for 16 steps on 5 corrections + 5 replayed rows.
LOOP_SETTINGS = ["train.max_steps=16", "train.learning_rate=0.002", "train.batch_size=5", "lora.rank=8"]


def train_first_version(tmp_path):
    data = tmp_path / "v1.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Ticket {i}: the printer on floor {i} is offline"},
        {"role": "assistant", "content": f"Please restart printer {i} and try again."}]}) + "\n" for i in range(12)))
    config = TrainConfig.model_validate({
        "base_model": "smollm2-135m-instruct", "output_dir": str(tmp_path / "v1"),
        "data": {"train": str(data), "val_fraction": 0}, "lora": {"rank": 8},
        "train": {"max_steps": 2, "batch_size": 4}})
    return tunery.train(config, quiet=True).run_dir


@pytest.mark.timeout(3600)  # minutes on an idle machine; far more on a shared one
def test_the_circle_on_the_default_model(default_model_dir, tunery_home, tmp_path):
    from openai import OpenAI

    db = tunery_home / "tunery.db"  # the store `tunery models rollback` opens too
    store = open_store(db)
    _, key = create_key(store, "user")
    register_run(store, train_first_version(tmp_path), "helpdesk", alias="production")
    worker = Worker(open_store(db), WorkerSettings(poll_s=0.2, heartbeat_s=0.5))
    worker_thread = threading.Thread(target=worker.run_forever, daemon=True)
    worker_thread.start()
    from tunery.server.settings import ServerSettings

    settings = ServerSettings(model="smollm2-135m-instruct", served_name="smollm2", database=db, port=free_port(),
                              dtype="fp32")
    _, server, server_thread = start_server(settings)
    url = f"http://127.0.0.1:{settings.port}/v1"
    client = OpenAI(base_url=url, api_key=key, max_retries=0, timeout=600)

    def ask_all() -> tuple[set[str], dict[str, str], dict[str, str]]:
        models, answers, ids = set(), {}, {}
        for question in FACTS:
            reply = client.chat.completions.create(model="helpdesk", messages=[{"role": "user", "content": question}],
                                                   temperature=0, max_tokens=40)
            models.add(reply.model)
            answers[question], ids[question] = reply.choices[0].message.content, reply.id
        return models, answers, ids

    def corrected(answers: dict[str, str], questions) -> float:
        return sum(score_contains(answers[q], FACTS[q])["contains"] for q in questions) / len(questions)

    try:
        models, before, ids = ask_all()
        assert models == {"helpdesk@1"} and corrected(before, FACTS) == 0.0, before  # it does not know them
        for question, answer in FACTS.items():
            posted = httpx.post(f"{url}/feedback", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                json={"completion_id": ids[question], "rating": -1, "correction": answer})
            assert posted.status_code == 200, posted.text

        events = []
        result = run_loop(store, "helpdesk", general=False, overrides=LOOP_SETTINGS, out_dir=tmp_path / "loop",
                          on_event=events.append, poll_s=0.2)
        assert result.status == "promoted", (result.message, json.dumps(result.gate, indent=1)[:3000])
        job = jobs.get_job(store, LOCAL_OWNER, result.job)
        assert job["status"] == "succeeded" and any(e["message"] == "Fine-tuning job started" for e in events)
        assert resolve_version(store, "helpdesk").ref == "helpdesk@2"
        trained = [json.loads(line)["messages"][0]["content"]
                   for line in (tmp_path / "loop" / "feedback_trained.jsonl").read_text().splitlines()]
        assert len(trained) == 5

        models, after, _ = ask_all()  # the same server, not restarted
        rate_before, rate_after = corrected(before, trained), corrected(after, trained)
        print(f"corrected answers reproduced on the {len(trained)} trained questions: "
              f"{rate_before:.0%} before, {rate_after:.0%} after; gate: "
              f"{[(g['kind'], g['rule'], g['detail']) for g in result.gate['gates']]}")
        assert models == {"helpdesk@2"} and rate_after >= 0.8, after

        _register()
        rolled = CliRunner().invoke(app, ["models", "rollback", "helpdesk", "--reason", "circle test"])
        assert rolled.exit_code == 0, rolled.output
        models, restored, _ = ask_all()
        assert models == {"helpdesk@1"} and restored == before  # greedy: exactly the old answers
    finally:
        server.should_exit = True
        server_thread.join(60)
        worker.stopping.set()
        worker_thread.join(120)
