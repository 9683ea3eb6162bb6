"""Gates that score what is served: `eval`/`compare --weights` generate through the serving engine with
the weights `tunery serve --weights` uses, and record them."""

from __future__ import annotations

import json

from evaluation.adapter_runs import make_adapter_run
from typer.testing import CliRunner

from tunery.evaluation.compare import compare_models
from tunery.evaluation.evaluate import evaluate_model

TASKS = [
    {"prompt": "What is the capital of France?", "reference": "Paris", "id": "capital"},
    {"prompt": "Part number?", "reference": r"TX-\d+", "metric": "regex", "id": "part"},
    {"prompt": "Outlook keeps crashing when I open shared calendars, what should I do first?",
     "reference": "Restart Outlook in safe mode", "metric": ["contains", "token_f1"], "id": "outlook"},
]


def write_tasks(path):
    path.write_text("".join(json.dumps(row) + "\n" for row in TASKS))
    return path


def test_full_weights_through_the_engine_equal_generate(tiny_model_dir, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}?", "completion": "An answer."}) + "\n" for i in range(3)))
    run = make_adapter_run(tiny_model_dir, tmp_path / "runs" / "tuned")
    for ref in (tiny_model_dir, run):  # the base, and a LoRA run served as base + adapter
        generated = evaluate_model(str(ref), tasks, max_new_tokens=10, dtype="fp32", loss_data=data)
        served = evaluate_model(str(ref), tasks, max_new_tokens=10, dtype="fp32", loss_data=data, weights="full")
        assert [r["prediction"] for r in served.rows] == [r["prediction"] for r in generated.rows]
        assert [r["num_tokens"] for r in served.rows] == [r["num_tokens"] for r in generated.rows]
        assert abs(served.loss["loss"] - generated.loss["loss"]) < 1e-4  # the adapter counts in both
        assert served.settings["weights"] == "full" and served.settings["decode"] == "torch"
        assert generated.settings["decode"] == "generate"


def test_compare_with_int4_scores_the_lane_and_records_it(tiny_model_dir, tmp_path):
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    run = make_adapter_run(tiny_model_dir, tmp_path / "runs" / "tuned")
    summary = compare_models([str(tiny_model_dir), str(run)], tasks, tmp_path / "cmp", max_new_tokens=8,
                             dtype="fp32", weights="int4", gates=["regex>=0"])
    saved = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert [m["settings"]["weights"] for m in saved["models"]] == ["int4", "int4"]
    assert [m["settings"]["decode"] for m in saved["models"]] == ["lane", "lane"]
    base, tuned = summary.models
    assert [r["prediction"] for r in base.rows] != [r["prediction"] for r in tuned.rows]  # the adapter is served
    # The run keeps what gated it, and its export carries that along.
    (gate,) = [json.loads(line) for line in (run / "gates.jsonl").read_text().splitlines()]
    assert gate["weights"] == "int4" and gate["decode"] == "lane" and gate["passed"] and gate["rules"] == ["regex>=0"]
    from tunery.export.run import export_run

    export_run(run, "adapter", tmp_path / "export")
    manifest = json.loads((tmp_path / "export" / "tunery-export.json").read_text())
    assert manifest["gated"] == gate


def test_cli_takes_weights_and_refuses_unknown_ones(tiny_model_dir, tmp_path):
    from tunery.cli import _register, app

    _register()
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    common = ["eval", str(tiny_model_dir), "--tasks", str(tasks), "--max-new-tokens", "4", "--dtype", "fp32"]
    result = CliRunner().invoke(app, [*common, "--weights", "int3"])
    assert result.exit_code == 2 and "unknown weights format 'int3'" in result.output
    result = CliRunner().invoke(app, [*common, "--weights", "int4", "--out", str(tmp_path / "e"), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "e" / "scores.json").read_text())
    assert scores["settings"]["weights"] == "int4" and scores["settings"]["decode"] == "lane"
