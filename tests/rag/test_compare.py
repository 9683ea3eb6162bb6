"""`MODEL+rag:INDEX` in eval and compare: retrieved prompts, citations, cost and hit rate, the verdict."""

from __future__ import annotations

import json
import shutil

import pytest

from tunery.errors import RetrievalError
from tunery.evaluation.compare import compare_models
from tunery.models import resolve_model
from tunery.rag import build_index

FACTS = ["The Osprey switch fan is part KX-1111-A.", "The Heron router battery is part MB-2222-C.",
         "The Wren printer toner is part TD-3333-F.", "The Ibis scanner lamp is part RV-4444-B."]


@pytest.fixture
def fact_index(tmp_path, tiny_model_dir):
    doc = tmp_path / "facts.md"
    doc.write_text("\n\n".join(FACTS) + "\n", encoding="utf-8")
    build_index([doc], tmp_path / "idx", model=str(tiny_model_dir), chunk_tokens=40, overlap_tokens=0, top_k=2)
    return tmp_path / "idx"


def write_tasks(path):
    rows = []
    for fact in FACTS:
        thing, part = fact.removeprefix("The ").split(" is part ")
        rows.append({"prompt": f"What is the part number of the {thing}?", "reference": part.rstrip("."),
                     "metric": "contains", "source": "facts.md", "evidence": part.rstrip("."),
                     "meta": {"task": "parts"}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_compare_reports_cost_hit_rate_and_a_verdict(tmp_path, tiny_model_dir, fact_index):
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    summary = compare_models([str(tiny_model_dir), f"{tiny_model_dir}+rag:{fact_index}"], tasks, tmp_path / "out",
                             max_new_tokens=4, batch_size=2)
    base, rag = summary.models
    assert rag.label.endswith("+rag") and base.label != rag.label
    assert rag.usage["retrieval_hit_rate"]["mean"] == 1.0 and rag.usage["retrieval_hit_rate"]["n"] == 4
    assert base.usage["retrieval_hit_rate"] is None
    assert rag.usage["median_prompt_tokens"] > base.usage["median_prompt_tokens"] + 20
    assert base.usage["median_latency_ms"] > 0
    row = rag.rows[0]
    assert row["retrieval"]["citations"][0]["source"] == "facts.md" and row["retrieval"]["hit"] is True
    predictions = [json.loads(line) for line in (tmp_path / "out" / rag.label / "predictions.jsonl").open()]
    assert predictions[0]["retrieval"]["citations"]
    assert summary.verdict["winner"] in (base.label, rag.label) and "wins on this data" in summary.verdict["text"]
    assert set(rag.by_task()) == {"parts"}
    html = (tmp_path / "out" / "report.html").read_text()
    markdown = (tmp_path / "out" / "summary.md").read_text()
    for text in (html, markdown):
        assert "retrieval hit rate" in text and "median prompt tokens per answer" in text
    assert "Verdict" in html and "Per task" in html
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["verdict"]["text"] == summary.verdict["text"]


def test_missing_index_and_wrong_tokenizer_are_clear_errors(tmp_path, tiny_model_dir, fact_index):
    with pytest.raises(RetrievalError) as missing:
        resolve_model(f"{tiny_model_dir}+rag:{tmp_path / 'nope'}")
    assert missing.value.code == "index_not_found" and "tunery rag index" in missing.value.hint
    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    config = json.loads((other / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (other / "tokenizer_config.json").write_text(json.dumps(config))
    (other / "chat_template.jinja").unlink(missing_ok=True)
    from tunery.evaluation.evaluate import evaluate_model

    with pytest.raises(RetrievalError) as wrong:
        evaluate_model(f"{other}+rag:{fact_index}", write_tasks(tmp_path / "t.jsonl"), max_new_tokens=2)
    assert wrong.value.code == "index_tokenizer" and "--rebuild" in wrong.value.hint


def test_eval_cli_prints_the_retrieval_hit_rate_and_its_json_carries_usage(tmp_path, tiny_model_dir, fact_index):
    from typer.testing import CliRunner

    from tunery.cli import _register, app

    _register()
    tasks = write_tasks(tmp_path / "tasks.jsonl")
    ref = f"{tiny_model_dir}+rag:{fact_index}"
    shown = CliRunner().invoke(app, ["eval", ref, "--tasks", str(tasks), "--max-new-tokens", "2", "--dtype", "fp32"])
    assert shown.exit_code == 0, shown.output
    assert "retrieval hit rate 1.000 [1.000, 1.000] n=4" in " ".join(shown.output.split())
    as_json = CliRunner().invoke(app, ["eval", ref, "--tasks", str(tasks), "--max-new-tokens", "2", "--dtype", "fp32",
                                       "--json"])
    usage = json.loads(as_json.stdout)["usage"]
    assert usage["retrieval_hit_rate"]["mean"] == 1.0 and usage["median_prompt_tokens"] > 20
