"""Bounded reads: a line, a whole file and one example each have a cap, refused with a located error
before anything large is read or tokenized; memory stays flat on a 200 MB one-line file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from data.dataset_files import chat_lines, write_lines
from typer.testing import CliRunner

from tunery.cli import _register, app
from tunery.data.check import check_dataset

_register()
runner = CliRunner()
ROOT = Path(__file__).parents[2]

# Runs `tunery data check FILE --model MODEL` in a fresh process and prints its peak RSS (KiB on Linux).
PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys
    from tunery.cli import _register, app
    _register()
    try:
        app(["data", "check", sys.argv[1], "--model", sys.argv[2]])
    except SystemExit as done:
        code = done.code
    print("MAXRSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "EXIT", code)
""")


def peak_rss_kib(path: Path, model: Path) -> tuple[int, int, str]:
    proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path), str(model)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "400"}, timeout=600)
    words = proc.stdout.split("MAXRSS")[-1].split()
    return int(words[0]), int(words[2]), proc.stdout + proc.stderr


def test_a_200_mb_one_line_file_is_refused_with_memory_bounded(tmp_path, tiny_model_dir):
    small = write_lines(tmp_path / "small.jsonl", chat_lines(12))
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as handle:  # one JSON object, 200 MB, no newline: what a missing newline makes
        handle.write(b'{"messages": [{"role": "user", "content": "')
        for _ in range(200):
            handle.write(b"a" * (1 << 20))
        handle.write(b'"}, {"role": "assistant", "content": "ok"}]}')
    baseline_kib, baseline_exit, _ = peak_rss_kib(small, tiny_model_dir)
    big_kib, big_exit, output = peak_rss_kib(big, tiny_model_dir)
    assert baseline_exit == 0 and big_exit == 1, output
    assert "line_too_long" in output and f"{big}:1" in output and "TUNERY_MAX_LINE_BYTES" in output
    assert "Traceback" not in output
    assert big_kib - baseline_kib < 64 * 1024, (baseline_kib, big_kib)  # reading it would add >= 200 MB


def test_the_line_cap_is_located_and_can_be_raised(tmp_path, monkeypatch):
    long_row = json.dumps({"messages": [{"role": "user", "content": "x" * 500}, {"role": "assistant", "content": "ok"}]})
    path = write_lines(tmp_path / "d.jsonl", chat_lines(10) + [long_row])
    monkeypatch.setenv("TUNERY_MAX_LINE_BYTES", "300")
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1 and f"{path}:11" in result.output and "[line_too_long]" in result.output
    assert "300" in result.output and "TUNERY_MAX_LINE_BYTES" in result.output
    monkeypatch.setenv("TUNERY_MAX_LINE_BYTES", "1000")
    assert runner.invoke(app, ["data", "check", str(path)]).exit_code == 0
    monkeypatch.setenv("TUNERY_MAX_LINE_BYTES", "lots")
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 2 and "TUNERY_MAX_LINE_BYTES must be a positive whole number" in result.output


def test_file_and_example_caps(tmp_path, monkeypatch):
    rows = [json.loads(line) for line in chat_lines(10)]
    rows[3]["messages"][0]["content"] = "y" * 5000
    array = tmp_path / "d.json"
    array.write_text(json.dumps(rows))  # one line: a JSON array is bounded by the file cap, not the line cap
    monkeypatch.setenv("TUNERY_MAX_LINE_BYTES", "100")
    monkeypatch.setenv("TUNERY_MAX_EXAMPLE_CHARS", "1000")
    report = check_dataset(array)
    (problem,) = [p for p in report["problems"] if p["code"] == "example_too_long"]
    assert problem["line"] == 1 and "5,0" in problem["message"] and "TUNERY_MAX_EXAMPLE_CHARS" in problem["hint"]
    assert report["summary"]["examples"] == 9
    monkeypatch.setenv("TUNERY_MAX_FILE_BYTES", "1000")
    report = check_dataset(array)
    assert [p["code"] for p in report["problems"]][:1] == ["file_too_large"]
    assert "TUNERY_MAX_FILE_BYTES" in report["problems"][0]["hint"]
