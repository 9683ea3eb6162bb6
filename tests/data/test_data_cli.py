"""`tunery data check` and `tunery data show` through the real CLI, and a property test that no bytes crash it."""

from __future__ import annotations

import json

from data.dataset_files import chat_lines, write_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tunery.cli import _register, app
from tunery.data.check import check_dataset

_register()
runner = CliRunner()


def test_check_clean_file_exits_zero_with_summary(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", chat_lines(12))
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 0, result.output
    for expected in ("format", "chat", "examples", "12", "turns", "24 (12 trained)", "errors", "OK"):
        assert expected in result.output


def test_check_warnings_only_exits_zero_and_errors_exit_one(tmp_path):
    warned = write_lines(tmp_path / "w.jsonl", chat_lines(10) + chat_lines(1))
    result = runner.invoke(app, ["data", "check", str(warned)])
    assert result.exit_code == 0 and "duplicate_example" in result.output and "1 warning" in result.output
    broken = write_lines(tmp_path / "b.jsonl", chat_lines(10) + ['{"messages": "text"}'])
    result = runner.invoke(app, ["data", "check", str(broken)])
    assert result.exit_code == 1
    assert f"{broken}:11 messages error [wrong_type]" in result.output and "hint:" in result.output


def test_check_caps_the_problem_list_and_gives_the_total(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", chat_lines(10) + ["{"] * 120)
    result = runner.invoke(app, ["data", "check", str(path), "--max-problems", "5"])
    assert result.exit_code == 1
    assert result.output.count("[invalid_json]") == 5 and "... and 115 more problem(s)" in result.output
    assert "120 error(s)" in result.output


def test_check_json_is_one_object_with_the_same_facts(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", chat_lines(10) + ["", '{"text": NaN}'])
    result = runner.invoke(app, ["data", "check", str(path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problems_total"] == 2
    assert report["summary"]["examples"] == 10 and report["summary"]["blank_lines"] == 1
    assert report["summary"]["errors"] == 1 and report["summary"]["warnings"] == 1
    assert [(p["code"], p["line"], p["file"]) for p in report["problems"]] == [
        ("blank_lines", 0, str(path)), ("non_finite_number", 12, str(path))]
    assert report["files"][0]["format"] == "chat" and report["files"][0]["lines"] == 12


def test_check_with_model_counts_tokens_and_lists_too_long(tmp_path, tiny_model_dir):
    long_row = {"messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok"}]}
    path = write_lines(tmp_path / "d.jsonl", chat_lines(10) + [json.dumps(long_row)])
    result = runner.invoke(app, ["data", "check", str(path), "--model", str(tiny_model_dir),
                                 "--max-seq-len", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    from transformers import AutoTokenizer

    from tunery.data.template import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    from tunery.data import read_dataset

    encoded = [encode_conversation(tokenizer, c) for c in read_dataset(path).conversations]
    tokens = report["summary"]["tokens"]
    assert tokens["total"] == sum(len(e.input_ids) for e in encoded)
    assert tokens["trained"] == sum(e.num_trained for e in encoded) > 0
    assert tokens["too_long"] == 1 and tokens["length"]["max"] == len(encoded[-1].input_ids)
    too_long = [p for p in report["problems"] if p["code"] == "too_long"]
    assert [(p["line"], p["severity"]) for p in too_long] == [(11, "warning")]
    assert f"{len(encoded[-1].input_ids)} tokens > max_seq_len 64" in too_long[0]["message"]


def test_show_brackets_exactly_the_trained_tokens_when_piped(tmp_path, tiny_model_dir):
    row = {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "<|im_end|> hi"},
                        {"role": "assistant", "content": "first", "weight": 0},
                        {"role": "user", "content": "again"}, {"role": "assistant", "content": "second"}]}
    path = write_lines(tmp_path / "d.jsonl", chat_lines(3) + [json.dumps(row)])
    result = runner.invoke(app, ["data", "show", str(path), "--model", str(tiny_model_dir), "--index", "3"])
    assert result.exit_code == 0, result.output
    assert f"example 3 ({path}:4), chat" in result.output
    shown = result.output.split("\ntokens:")[0]
    assert "[[second<|im_end|>]]" in shown and shown.count("[[") == 1
    assert "<|im_start|>assistant\nfirst<|im_end|>" in result.output  # weight 0: shown, not trained
    assert "<|im_end|> hi" in result.output  # a lookalike in content is shown as the text it is
    assert "tokens:" in result.output and "trained" in result.output


def test_show_index_out_of_range_is_a_clear_error(tmp_path, tiny_model_dir):
    path = write_lines(tmp_path / "d.jsonl", chat_lines(3))
    result = runner.invoke(app, ["data", "show", str(path), "--model", str(tiny_model_dir), "--index", "7"])
    assert result.exit_code == 1 and "index_out_of_range" in result.output and "Traceback" not in result.output


def test_show_of_a_missing_or_empty_file_says_so(tmp_path, tiny_model_dir):
    missing = runner.invoke(app, ["data", "show", str(tmp_path / "none.jsonl"), "--model", str(tiny_model_dir)])
    assert missing.exit_code == 1 and "file_not_found" in missing.output and "usable" not in missing.output
    empty = write_lines(tmp_path / "e.jsonl", ['{"messages": []}'])
    nothing = runner.invoke(app, ["data", "show", str(empty), "--model", str(tiny_model_dir)])
    assert nothing.exit_code == 1 and "has no usable examples" in nothing.output and "between 0 and" not in nothing.output


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.binary(max_size=400),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(['{"messages": [', '{"role": "user"', '"content": ', '"x"', "null", "]", "}", ",",
                              "\n", "\r\n", '{"text": ', "1e999", "NaN", '"\\ud800"', '"weight": 2', "[" * 70,
                              '"prompt": "p"', "\xff", "\ufeff", '{"instruction": "i", "output": ""}']),
             max_size=30).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
), suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet"]))
def test_no_input_bytes_crash_check(tmp_path_factory, content, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"data{suffix}"
    path.write_bytes(content)
    report = check_dataset(path)
    assert isinstance(report["ok"], bool) and json.dumps(report)
    assert report["ok"] is False  # fewer than 10 examples can never pass
    assert all(p["code"] and p["severity"] in ("error", "warning") for p in report["problems"])


def test_cli_check_on_garbage_prints_errors_not_tracebacks(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(bytes(range(256)) * 8)
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1 and "binary_file" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_show_colours_trained_tokens_on_a_terminal(tmp_path, tiny_model_dir, monkeypatch):
    from rich.console import Console

    import tunery.cli.data as data_cli

    # A console that believes it writes to a terminal, as `tunery data show` does in one.
    monkeypatch.setattr(data_cli, "console", Console(force_terminal=True, color_system="standard", width=200))
    path = write_lines(tmp_path / "d.jsonl", chat_lines(2))
    result = runner.invoke(app, ["data", "show", str(path), "--model", str(tiny_model_dir), "--index", "1"])
    assert result.exit_code == 0, result.output
    assert "\x1b[" in result.output and "[[" not in result.output
    coloured = result.output.split("answer 1")[0].rsplit("\x1b[", 1)[-1]
    assert coloured == "1;30;42m"  # bold black on green starts right at the answer
    assert "highlighted" in result.output


def test_show_renders_with_an_overriding_chat_template(tmp_path, tiny_model_dir):
    template = tmp_path / "team.jinja"
    template.write_text("{% for m in messages %}{{ '### ' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                        "{% endfor %}")
    path = write_lines(tmp_path / "d.jsonl", chat_lines(1))
    result = runner.invoke(app, ["data", "show", str(path), "--model", str(tiny_model_dir),
                                 "--chat-template", str(template)])
    assert result.exit_code == 0, result.output
    assert "### user\n" in result.output and "<|im_start|>" not in result.output
    bad = runner.invoke(app, ["data", "show", str(path), "--model", str(tiny_model_dir), "--chat-template", "{{ x"])
    assert bad.exit_code != 0 and "invalid_chat_template" in bad.output
