"""The serving benchmark's harness end to end on the tiny model: every table is written, int4 task
scores come from the engine, the llama.cpp rows say why they are left out, and sections written by
hand survive a rerun. No timing asserts."""

from __future__ import annotations

import json


def test_serving_benchmark_writes_its_tables(tiny_model_dir, tmp_path):
    from bench import serve

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"prompt": "Part number?", "reference": "TX-4410", "id": "part"}) + "\n")
    out = tmp_path / "serving.md"
    hand = "## llama.cpp on the same model\n\nWritten by hand: | a | row |\n"
    out.write_text("# Serving benchmark\n\nan old generated table\n\n" + hand)
    serve.main(["--model", str(tiny_model_dir), "--dtype", "fp32", "--repetitions", "1", "--max-new-tokens", "4",
                "--clients", "2", "--tasks", str(tasks), "--llama-cpp", "none", "--output", str(out)])
    report = out.read_text()
    assert "| single stream, decode tokens/s |" in report and "tunery engine, int4" in report
    assert "Task scores on `tasks.jsonl`" in report and "| full |" in report and "| int4 |" in report
    assert "llama.cpp rows left out (--llama-cpp none)" in report
    assert "drift: whole greedy completions identical" in report
    # A rerun rewrites its own part and keeps the sections below it, once.
    assert "an old generated table" not in report and report.endswith(serve.KEPT_MARKER + "\n" + hand)
    assert serve.kept_sections(out) == hand and report.count(hand) == 1
