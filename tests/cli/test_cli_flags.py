"""Flags of the long-running commands: a value that cannot work is refused before anything starts or
is uploaded, with the flag named, never a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunery.cli import _register, app
from tunery.store import open_store
from tunery.store.files import list_files
from tunery.store.owners import LOCAL_OWNER

_register()


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("epochs", ["abc", "0", "1.5", "51"])
def test_n_epochs_that_is_not_a_count_fails_before_the_upload(tmp_path, monkeypatch, epochs):
    monkeypatch.delenv("TUNERY_URL", raising=False)
    data = tmp_path / "train.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    result = cli("jobs", "create", data, "--model", "smollm2-135m-instruct", "--n-epochs", epochs)
    assert result.exit_code == 2 and "--n-epochs" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not list_files(open_store(), LOCAL_OWNER)[0]  # nothing uploaded


@pytest.mark.parametrize("args", [["jobs", "events", "ftjob-x", "--follow", "--interval", "0"],
                                  ["jobs", "events", "ftjob-x", "--follow", "--interval", "1e30"],
                                  ["worker", "--poll-s", "inf"], ["worker", "--lease-s", "1e400"],
                                  ["worker", "--nproc-per-node", "100000"]])
def test_poll_intervals_and_process_counts_have_a_range(args):
    result = cli(*args)
    assert result.exit_code == 2 and "Invalid value for '" + args[-2] in result.output, result.output


@pytest.mark.parametrize("option", ["--adapter", "--rag"])
def test_serve_refuses_a_name_given_twice(tmp_path, option):
    result = cli("serve", "--model", tmp_path / "none", option, f"a={tmp_path}", option, f"a={tmp_path}/b")
    assert result.exit_code == 2 and "names 'a' twice" in result.output, result.output


def test_a_misspelt_key_is_suggested_once(tmp_path, monkeypatch):
    monkeypatch.delenv("TUNERY_URL", raising=False)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": "a"}]}) + "\n" for i in range(12)))
    result = cli("jobs", "create", data, "--model", "smollm2-135m-instruct", "--set", "train.lr=1")
    assert result.exit_code == 2 and result.output.count("did you mean 'train.learning_rate'") == 1, result.output
