"""End to end on the tiny model: generation, saved predictions, comparison report, gates, loss, judge."""

from __future__ import annotations

import json
import math
import re

import pytest
from evaluation.adapter_runs import make_adapter_run
from typer.testing import CliRunner

from tunery.evaluation.compare import compare_models
from tunery.evaluation.evaluate import evaluate_model, evaluate_model_loss
from tunery.evaluation.judge import JudgeSpec, parse_verdict

TASKS = [
    {"prompt": "What is the capital of France?", "reference": "Paris", "id": "capital"},
    {"messages": [{"role": "system", "content": "Answer with JSON only."},
                  {"role": "user", "content": "The VPN is down for the whole floor since this morning."}],
     "reference": {"category": "network", "priority": "high"}, "id": "ticket"},
    {"prompt": "Part number?", "reference": r"TX-\d+", "metric": "regex", "id": "part"},
    {"prompt": "Outlook keeps crashing when I open shared calendars, what should I do first?",
     "reference": "Restart Outlook in safe mode", "metric": ["contains", "token_f1"], "id": "outlook"},
]


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "tasks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in TASKS))
    return path


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir, tmp_path_factory):
    return make_adapter_run(tiny_model_dir, tmp_path_factory.mktemp("runs") / "tuned")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_are_saved_and_batching_does_not_change_them(tiny_model_dir, tasks_file, tmp_path):
    batched = evaluate_model(str(tiny_model_dir), tasks_file, out_dir=tmp_path / "b", batch_size=4,
                             max_new_tokens=12, dtype="fp32")
    single = evaluate_model(str(tiny_model_dir), tasks_file, batch_size=1, max_new_tokens=12, dtype="fp32")
    assert [r["prediction"] for r in batched.rows] == [r["prediction"] for r in single.rows]
    saved = read_jsonl(tmp_path / "b" / "predictions.jsonl")
    assert [r["id"] for r in saved] == ["capital", "ticket", "part", "outlook"]
    assert [r["prediction"] for r in saved] == [r["prediction"] for r in batched.rows]
    assert saved[1]["metrics"] == ["json_valid", "json_fields"] and saved[2]["metrics"] == ["regex"]
    assert set(saved[3]["scores"]) == {"contains", "token_f1"}
    assert all(r["num_tokens"] <= 12 for r in saved)
    scores = json.loads((tmp_path / "b" / "scores.json").read_text())
    assert scores["metrics"]["regex"]["n"] == 1 and scores["settings"]["decoding"] == "greedy"


def test_a_run_directory_evaluates_its_adapter(tiny_model_dir, run_dir, tasks_file):
    base = evaluate_model(str(tiny_model_dir), tasks_file, max_new_tokens=8, dtype="fp32")
    tuned = evaluate_model(str(run_dir), tasks_file, max_new_tokens=8, dtype="fp32")
    assert tuned.run_dir == str(run_dir.resolve())
    assert [r["prediction"] for r in tuned.rows] != [r["prediction"] for r in base.rows]


def test_compare_writes_an_offline_report(tiny_model_dir, run_dir, tasks_file, tmp_path):
    out = tmp_path / "cmp"
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "completion": "An answer."}) + "\n" for i in range(3)))
    summary = compare_models([str(tiny_model_dir), str(run_dir)], tasks_file, out, loss_data=data,
                             gates=["regex>=0", "json_fields>=0.9"], max_new_tokens=8, dtype="fp32")
    assert not summary.passed and [g.rule for g in summary.failed_gates] == ["json_fields>=0.9"]
    html = (out / "report.html").read_text()
    assert not re.search(r"https?://|<script|<link|\bsrc=", html)
    assert html.count("<svg") >= 3  # metric bars, delta bars, loss curves
    assert "Training and validation loss" in html and "tuned val" in html
    assert "<td>perplexity</td>" in html and "| perplexity |" in (out / "summary.md").read_text()
    assert summary.models[0].loss["num_examples"] == 3
    assert summary.models[0].loss["loss"] != summary.models[1].loss["loss"]
    data = json.loads((out / "summary.json").read_text())
    assert data["passed"] is False
    assert data["loss_curves"]["tuned"]["train"][0] == [1.0, 2.7]
    assert data["loss_curves"]["tuned"]["val"] == [[3.0, 2.35], [6.0, 1.6]]
    comparison = data["comparisons"][0]
    assert sum(comparison["outcomes"].values()) == 4
    for label in ("tiny-model0", "tuned"):
        assert len(read_jsonl(out / label / "predictions.jsonl")) == 4
    assert "| metric | tiny-model0 | tuned |" in (out / "summary.md").read_text()


def cli(*args):
    from tunery.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_gate_exit_codes(tiny_model_dir, run_dir, tasks_file, tmp_path):
    common = ["compare", tiny_model_dir, run_dir, "--tasks", tasks_file, "--max-new-tokens", 4, "--dtype", "fp32"]
    passed = cli(*common, "--out", tmp_path / "a", "--gate", "regex>=0")
    assert passed.exit_code == 0, passed.output
    failed = cli(*common, "--out", tmp_path / "b", "--gate", "json_fields>=0.9", "--gate", "no-regression:1")
    assert failed.exit_code == 3
    assert "gate failed" in failed.output and "json_fields>=0.9" in failed.output
    bad = cli(*common, "--out", tmp_path / "c", "--gate", "json_fields=>0.9")
    assert bad.exit_code == 2 and "cannot read gate rule" in bad.output
    assert not (tmp_path / "c").exists()


def test_cli_eval_json(tiny_model_dir, tasks_file, tmp_path):
    result = cli("eval", tiny_model_dir, "--tasks", tasks_file, "--json", "--max-new-tokens", 4,
                 "--metric", "contains", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    # --metric applies to rows that name none; the others keep their own.
    assert set(data["metrics"]) == {"contains", "regex", "token_f1"}
    assert (tmp_path / "e" / "predictions.jsonl").is_file()


def test_loss_and_perplexity_match_a_direct_forward(tiny_model_dir, tmp_path):
    import torch
    import torch.nn.functional as F

    from tunery.data.dataset import load_dataset
    from tunery.data.template import encode_conversation
    from tunery.models import load_model

    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": "Answer " * (i + 1)}]} for i in range(3)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_model_loss(str(tiny_model_dir), data, dtype="fp32", batch_size=2)
    model, tokenizer = load_model(str(tiny_model_dir), dtype="fp32")
    total, count = 0.0, 0
    for conv in load_dataset(data, min_examples=1):
        ex = encode_conversation(tokenizer, conv)
        with torch.no_grad():
            logits = model(torch.tensor([ex.input_ids])).logits[0, :-1]
        targets = torch.tensor(ex.labels[1:])
        total += float(F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum"))
        count += int((targets != -100).sum())
    assert result["num_tokens"] == count and result["num_examples"] == 3
    assert result["loss"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_cli_fields_option_limits_json_fields(tiny_model_dir, tasks_file, tmp_path):
    result = cli("eval", tiny_model_dir, "--tasks", tasks_file, "--json", "--max-new-tokens", 2,
                 "--fields", "priority", "--limit", 2)
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output[result.output.index("{"):])["metrics"]
    assert "json_field.priority" in metrics and "json_field.category" not in metrics
    assert metrics["exact_match"] is not None and "regex" not in metrics  # row 3 is past --limit
    wrong = cli("eval", tiny_model_dir, "--tasks", tasks_file, "--fields", "team")
    assert wrong.exit_code == 1 and "none of the fields team" in wrong.output


def test_cli_eval_data_only_reports_loss(tiny_model_dir, tmp_path):
    rows = [{"prompt": f"Question {i}?", "completion": "An answer."} for i in range(2)]
    data = tmp_path / "pc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("eval", tiny_model_dir, "--data", data, "--json", "--dtype", "fp32")
    assert result.exit_code == 0, result.output
    loss = json.loads(result.output[result.output.index("{"):])["loss"]
    assert loss["num_examples"] == 2 and loss["perplexity"] == pytest.approx(math.exp(loss["loss"]))
    nothing = cli("eval", tiny_model_dir)
    assert nothing.exit_code == 2 and "nothing to evaluate" in nothing.output


def test_parse_verdict():
    assert parse_verdict("PASS: matches the reference.") == parse_verdict("pass - matches the reference.")
    verdict = parse_verdict("Verdict: FAIL: the priority is wrong")
    assert not verdict.passed and verdict.reason == "the priority is wrong"
    assert parse_verdict("PASS").passed
    unsure = parse_verdict("I am not sure")
    assert not unsure.passed and "no verdict" in unsure.reason


def test_judge_metric_records_a_verdict_and_reason(tiny_model_dir, tasks_file, tmp_path):
    result = evaluate_model(str(tiny_model_dir), tasks_file, metrics=["judge"], max_new_tokens=4,
                            judge=JudgeSpec(model_ref=str(tiny_model_dir), rubric="Be exact.", max_new_tokens=8))
    judged = [row for row in result.rows if "judge" in row["scores"]]
    assert [row["id"] for row in judged] == ["capital", "ticket"]  # the others name their own metrics
    for row in judged:
        assert row["scores"]["judge"] in (0.0, 1.0) and row["judge_reason"]


def test_compare_general_adds_the_shipped_tasks(tiny_model_dir, run_dir, tasks_file, tmp_path):
    result = cli("compare", tiny_model_dir, run_dir, "--tasks", tasks_file, "--general", "--limit", 5,
                 "--max-new-tokens", 4, "--dtype", "fp32", "--out", tmp_path / "out", "--gate", "no-regression:1")
    assert result.exit_code == 0, result.output
    from tunery.evaluation.general_skills import GENERAL_TASKS_PATH

    general = json.loads((tmp_path / "out" / "general" / "summary.json").read_text())
    assert general["tasks"] == str(GENERAL_TASKS_PATH) and general["gates"][0]["passed"]
    assert len((tmp_path / "out" / "general" / "tuned" / "predictions.jsonl").read_text().splitlines()) == 5
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["tasks"] == str(tasks_file)
    neither = cli("compare", tiny_model_dir, run_dir, "--out", tmp_path / "none")
    assert neither.exit_code == 2 and "--general" in neither.output
