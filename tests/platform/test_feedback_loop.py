"""One pass of the loop on the tiny model: feedback -> scrubbed dataset -> candidate -> gates; and when it does nothing."""

from __future__ import annotations

import json
import threading

import pytest
from typer.testing import CliRunner

import tunery
from tunery.cli import _register, app
from tunery.config import TrainConfig
from tunery.errors import ConfigError
from tunery.platform import jobs
from tunery.platform.feedback_loop import collect_examples, run_loop
from tunery.platform.pii import Scrubber
from tunery.platform.registry import register_run, resolve_version
from tunery.platform.worker import Worker, WorkerSettings
from tunery.store import open_store
from tunery.store.feedback_reviews import review_feedback
from tunery.store.owners import LOCAL_OWNER, Actor
from tunery.store.registry import alias_version
from tunery.store.requests import LoggedCompletion, list_rated_completions, log_completion, record_feedback

SMALL = ["train.epochs=1", "train.batch_size=2", "train.precision=fp32", "train.learning_rate=0.01"]


@pytest.fixture
def worker():
    """A worker claiming jobs from the test's store (TUNERY_HOME's), in a thread; its runs are child processes."""
    running = Worker(open_store(), WorkerSettings(poll_s=0.1, heartbeat_s=0.2))
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.stopping.set()
    thread.join(120)


@pytest.fixture
def production(tiny_model_dir, tmp_path, worker):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is part {i}?"},
                                                     {"role": "assistant", "content": f"Part {i} is TX-{i}."}]}) + "\n"
                            for i in range(12)))
    config = TrainConfig.model_validate({"base_model": str(tiny_model_dir), "output_dir": str(tmp_path / "v1"),
                                         "data": {"train": str(data), "val_fraction": 0},
                                         "train": {"epochs": 1, "batch_size": 4, "precision": "fp32"}})
    run = tunery.train(config, quiet=True)
    store = open_store()
    register_run(store, run.run_dir, "helpdesk", alias="production")
    return store


def give_feedback(store, answers: dict[str, str], model: str = "helpdesk@1") -> None:
    for index, (question, correction) in enumerate(answers.items()):
        cid = f"c{index}-{abs(hash(question))}"
        log_completion(store, LoggedCompletion(id=cid, model=model, kind="chat",
                                               messages=[{"role": "user", "content": question}], outputs=["wrong"],
                                               finish_reason="stop", prompt_tokens=3, completion_tokens=1, latency_ms=1))
        record_feedback(store, LOCAL_OWNER, cid, -1, correction=correction)


def test_a_pass_trains_registers_and_gates_a_candidate(production, tmp_path):
    store = production
    give_feedback(store, {f"Where is printer {i}? Mail me at ana{i}@example.com": f"Printer {i} is on floor {i % 4}."
                          for i in range(10)})
    give_feedback(store, {"Other model": "not counted"}, model="other@1")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"What is part {i}?", "reference": f"Part {i} is TX-{i}."}) + "\n"
                             for i in range(3)))
    events = []
    result = run_loop(store, "helpdesk", tasks=tasks, review=True, out_dir=tmp_path / "loop", limit=3,
                      overrides=SMALL, gates=["no-regression:1"], on_event=events.append, poll_s=0.1)
    assert result.status in ("candidate", "gate_failed"), result.message
    # The candidate was trained as a job on the queue, claimed by the worker, continuing production's adapter.
    job = jobs.get_job(store, LOCAL_OWNER, result.job)
    assert job["status"] == "succeeded" and job["tunery"]["worker_id"] is None and job["metadata"] == {
        "tunery_loop": "helpdesk", "production": "helpdesk@1"}
    messages = [e["message"] for e in events]
    assert messages[0].startswith(f"Queued the candidate's training as job {result.job}")
    assert "Fine-tuning job started" in messages and messages[-1] == "The job has successfully completed"
    assert resolve_version(store, "helpdesk@2").parent == "helpdesk@1"
    assert resolve_version(store, "helpdesk@2").job_id == result.job
    assert (result.examples, result.held_out, result.replayed) == (8, 2, 8)
    assert result.candidate == "helpdesk@2" and alias_version(store, "helpdesk", "candidate") == 2
    assert resolve_version(store, "helpdesk").ref == "helpdesk@1"  # review: production untouched
    train = (tmp_path / "loop" / "train.jsonl").read_text()
    assert "ana" not in train and "<EMAIL_1>" in train and "not counted" not in train
    report = json.loads((tmp_path / "loop" / "report.json").read_text())
    assert [e["step"] for e in report["timeline"]] == ["collect", "dataset", "train", "compare", "decide"]
    assert report["timeline"][2]["job"] == result.job and report["job"] == result.job
    # The gate: the trained corrections reproduced; no regression beyond the tolerance elsewhere.
    kinds = {c["kind"]: c["tasks"] for c in report["gate"]["comparisons"]}
    assert kinds == {"trained feedback": str(tmp_path / "loop" / "feedback_trained.jsonl"),
                     "held-out feedback": str(tmp_path / "loop" / "feedback_held_out.jsonl"),
                     "your tasks": str(tasks), "general skills": kinds["general skills"]}
    rules = {g["kind"]: g["rule"] for g in report["gate"]["gates"]}
    assert rules == {"trained feedback": "contains>=0.8", "held-out feedback": "no-regression:0.05",
                     "your tasks": "no-regression:1", "general skills": "no-regression:0.05"}
    trained = [json.loads(line) for line in (tmp_path / "loop" / "feedback_trained.jsonl").read_text().splitlines()]
    assert len(trained) == 8 and all(row["reference"].startswith("Printer ") for row in trained)
    passed = report["gate"]["passed"] == all(g["passed"] for g in report["gate"]["gates"])
    assert passed and (result.status == "gate_failed") == (not report["gate"]["passed"])
    assert (tmp_path / "loop" / "report.html").is_file()


def test_nothing_to_do_all_pii_and_a_failing_candidate(production, tmp_path):
    store = production
    _register()
    runner = CliRunner()
    quiet = runner.invoke(app, ["loop", "run", "helpdesk", "--out", str(tmp_path / "a")])
    assert quiet.exit_code == 0 and "too_little_feedback" in quiet.output
    give_feedback(store, {f"q{i}": f"ana{i}@example.com" for i in range(6)})  # every answer is PII
    scrubbed = run_loop(store, "helpdesk", out_dir=tmp_path / "b")
    assert scrubbed.status == "too_little_feedback" and scrubbed.message.startswith("0 usable")
    give_feedback(store, {f"Question {i}": f"Answer {i}." for i in range(6)})
    failed = runner.invoke(app, ["loop", "run", "helpdesk", "--out", str(tmp_path / "c"), "--no-general",
                                 "--set", "train.learnig_rate=1"])
    assert failed.exit_code == 2 and "invalid_config" in failed.output  # a typo fails before the pass: no report
    assert not (tmp_path / "c").exists()
    assert resolve_version(store, "helpdesk").ref == "helpdesk@1" and alias_version(store, "helpdesk", "candidate") is None


def test_a_reviewed_loop_trains_only_on_approved_feedback_with_the_edits(production):
    store = production
    give_feedback(store, {f"Question {i}": f"Answer {i}." for i in range(4)})
    since = resolve_version(store, "helpdesk").created_at
    assert len(collect_examples(store, "helpdesk", since, Scrubber())) == 4
    assert collect_examples(store, "helpdesk", since, Scrubber(), approved_only=True) == []
    admin = Actor("reviewer", admin=True)
    ids = {c.messages[0]["content"]: c.id for c, _ in
           list_rated_completions(store, admin)}
    review_feedback(store, admin, ids["Question 0"], "approved")
    review_feedback(store, admin, ids["Question 1"], "approved", correction="Answer one, as reviewed.")
    review_feedback(store, admin, ids["Question 2"], "rejected")
    kept = collect_examples(store, "helpdesk", since, Scrubber(), approved_only=True)
    answers = sorted(example["messages"][-1]["content"] for example in kept)
    assert answers == ["Answer 0.", "Answer one, as reviewed."]
    quiet = run_loop(store, "helpdesk", approved_only=True, min_feedback=3)
    assert quiet.status == "too_little_feedback" and quiet.message.startswith("2 usable")


def test_a_cancelled_candidate_job_fails_the_pass_and_leaves_production(production, tmp_path):
    store = production
    give_feedback(store, {f"Question {i}": f"Answer {i}." for i in range(6)})

    def cancel_when_queued(event):
        if event["message"].startswith("Queued the candidate's training as job"):
            job_id = event["message"].split("job ")[1].split(";")[0]
            jobs.cancel_job(store, LOCAL_OWNER, job_id)

    result = run_loop(store, "helpdesk", out_dir=tmp_path / "c", general=False, overrides=SMALL,
                      on_event=cancel_when_queued, poll_s=0.1)
    assert result.status == "failed" and "cancelled" in result.message, result.message
    assert jobs.get_job(store, LOCAL_OWNER, result.job)["status"] == "cancelled"
    assert resolve_version(store, "helpdesk").ref == "helpdesk@1" and alias_version(store, "helpdesk", "candidate") is None


def test_with_no_worker_the_pass_gives_up_after_its_timeout_and_cancels_its_job(production, worker, tmp_path):
    store = production
    worker.stopping.set()  # nobody claims the queue
    give_feedback(store, {f"Question {i}": f"Answer {i}." for i in range(6)})
    _register()
    out = CliRunner().invoke(app, ["loop", "run", "helpdesk", "--out", str(tmp_path / "t"), "--no-general",
                                   "--job-timeout-s", "1", *[f"--set={o}" for o in SMALL]])
    assert out.exit_code == 1 and "candidate_timeout" in out.output, out.output
    assert "waiting for a worker" in " ".join(out.output.split())  # the console wraps lines
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report["status"] == "failed" and jobs.get_job(store, LOCAL_OWNER, report["job"])["status"] == "cancelled"
    assert resolve_version(store, "helpdesk").ref == "helpdesk@1"


def test_the_gates_score_the_weights_asked_for(production, tmp_path):
    """`weights`: both versions generate through the serving engine with those weights, and the report says so."""
    from tunery.platform.loop_gate import gate_candidate

    store = production
    version = resolve_version(store, "helpdesk")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"What is part {i}?", "reference": f"Part {i} is TX-{i}."}) + "\n"
                             for i in range(2)))
    report = gate_candidate(version, version, trained=tasks, held_out=None, tasks=None, gates=[], general=False,
                            out_dir=tmp_path / "int4", weights="int4")
    assert report["weights"] == "int4" and [c["decode"] for c in report["comparisons"]] == ["lane"]
    plain = gate_candidate(version, version, trained=tasks, held_out=None, tasks=None, gates=[], general=False,
                           out_dir=tmp_path / "full")
    assert plain["weights"] == "full" and [c["decode"] for c in plain["comparisons"]] != ["lane"]
    with pytest.raises(ConfigError, match="unknown weights format 'int3'"):
        run_loop(store, "helpdesk", weights="int3", out_dir=tmp_path / "typo")
    assert not (tmp_path / "typo").exists()  # refused before the pass began
