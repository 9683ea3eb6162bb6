"""`tunery loop run|watch` and `serve --loop`: the user's own mistakes fail at once, before any pass or load."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunery.cli import _register, app
from tunery.platform.registry import register_run
from tunery.store import open_store

_register()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def registered(tmp_path):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "completed", "lineage": {"base_model": "x"}}))
    register_run(open_store(), run, "helpdesk", alias="production")
    return "helpdesk"


@pytest.mark.parametrize("every", ["0.0001s", "0.5s", "999999999999d", "366d", "abc", "0"])
def test_every_outside_one_second_to_a_year_is_refused(registered, every):
    result = cli("loop", "watch", registered, "--every", every, "--max-runs", "1")
    assert result.exit_code == 2 and "--every" in result.output and "loops" not in result.output, result.output


@pytest.mark.parametrize(("tasks", "code"), [
    (b"\x00\xff\xfe" * 50, "not UTF-8"), (b"", "has no rows"), (b'{"prompt": "hi"}\n', "invalid_task_file")])
def test_a_bad_task_file_fails_the_pass_before_any_feedback_is_read(registered, tmp_path, tasks, code):
    path = tmp_path / "tasks.jsonl"
    path.write_bytes(tasks)
    for command in (["loop", "run", registered], ["loop", "watch", registered, "--every", "1s", "--max-runs", "2"]):
        result = cli(*command, "--tasks", path)
        assert result.exit_code != 0 and code in result.output and "pass failed" not in result.output, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("override", ["nokey", "train.nope=1"])
def test_a_bad_override_fails_even_when_there_is_nothing_to_train(registered, override):
    result = cli("loop", "run", registered, "--set", override)
    assert result.exit_code == 2 and "too_little_feedback" not in result.output, result.output


def test_watch_with_a_bad_name_stops_at_once_instead_of_failing_every_pass():
    result = cli("loop", "watch", "a/b", "--every", "1s", "--max-runs", "3")
    assert result.exit_code == 2 and result.output.count("is not a registry reference") == 1, result.output


def test_serve_checks_its_loop_flags_before_loading_the_model(registered, tmp_path):
    # --model is a missing path: were the model loaded first, the error would be model_not_found.
    missing = tmp_path / "no-model"
    bad_every = cli("serve", "--model", missing, "--loop", registered, "--loop-every", "1x", "--workers", "0")
    assert bad_every.exit_code == 2 and "--every '1x'" in bad_every.output, bad_every.output
    bad_name = cli("serve", "--model", missing, "--loop", "a/b", "--workers", "0")
    assert bad_name.exit_code == 2 and "'a/b' is not a registry reference" in bad_name.output, bad_name.output
    bad_tasks = cli("serve", "--model", missing, "--loop", registered, "--loop-tasks", tmp_path / "none.jsonl")
    assert bad_tasks.exit_code == 2 and "none.jsonl does not exist" in bad_tasks.output, bad_tasks.output
    no_secret = cli("serve", "--model", missing, "--webhook", "http://127.0.0.1:9/x", "--workers", "0")
    assert no_secret.exit_code == 2 and "--webhook needs a secret" in no_secret.output, no_secret.output


@pytest.mark.parametrize(("loop_arg", "said"), [("--nope", "No such option: --nope"),
                                                ("--max-runs=0", "Invalid value for '--max-runs'"),
                                                ("--weights=int3", "unknown weights format 'int3'")])
def test_serve_parses_its_loop_args_as_loop_watch_will(registered, tmp_path, loop_arg, said):
    result = cli("serve", "--model", tmp_path / "no-model", "--loop", registered, "--workers", "0",
                 f"--loop-arg={loop_arg}")
    assert result.exit_code == 2 and "--loop-arg" in result.output and said in result.output, result.output


def test_loop_run_out_that_is_a_file_names_the_option_and_keeps_the_file(registered, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine\n")
    result = cli("loop", "run", registered, "--out", mine)
    assert result.exit_code == 2 and "--out" in result.output and "is a file" in result.output, result.output
    assert mine.read_text() == "mine\n"


def test_loop_weights_are_checked_and_serve_passes_its_own_on(registered):
    from tunery.cli.serve import loop_weights

    refused = cli("loop", "run", registered, "--weights", "int3")
    assert refused.exit_code == 2 and "unknown weights format 'int3'" in refused.output, refused.output
    assert "--weights" in cli("loop", "watch", "--help").output
    assert loop_weights("int4", ["--no-general"]) == ["--weights", "int4"]  # the gates score what is served
    assert loop_weights("full", []) == []
    assert loop_weights("int4", ["--weights=int8"]) == [] and loop_weights("int8", ["--weights", "full"]) == []
