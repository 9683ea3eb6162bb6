"""The registry through `tunery models`: register with lineage, promote past gates (exit 3), force, roll back."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.inference.conftest import save_lora_run
from tunery.cli import _register, app
from tunery.platform.registry import describe, register_run, resolve_version
from tunery.store import open_store


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry-runs")
    first, second = (save_lora_run(tiny_model_dir, root / name, seed=seed) for name, seed in (("v1", 1), ("v2", 2)))
    info = json.loads((second / "run.json").read_text())
    info["lineage"]["init_from"] = str(first)  # v2 continued v1's adapter
    (second / "run.json").write_text(json.dumps(info))
    tasks = root / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"Say {w}", "reference": w}) + "\n" for w in ("yes", "no", "ok")))
    return first, second, tasks


def cli(*args):
    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


# Two gated comparisons on a real model: about 4 minutes alone, more on a loaded machine.
@pytest.mark.timeout(1800)
def test_register_promote_gate_force_rollback(runs, tmp_path):
    first, second, tasks = runs
    assert cli("models", "register", first, "--name", "helpdesk", "--alias", "production").exit_code == 0
    assert cli("models", "register", second, "--name", "helpdesk").exit_code == 0
    store = open_store()
    assert resolve_version(store, "helpdesk").ref == "helpdesk@1"
    assert describe(store, "helpdesk@2")["lineage"] == ["helpdesk@2", "helpdesk@1", resolve_version(store, "helpdesk@1").base_model]

    common = ["models", "promote", "helpdesk@2", "--tasks", tasks, "--out", tmp_path / "gate"]
    failed = cli(*common, "--gate", "exact_match>=2")
    assert failed.exit_code == 3, failed.output
    assert "did not pass the gates" in failed.output and resolve_version(store, "helpdesk").version == 1
    assert cli(*common, "--gate", "exact_match>=2", "--force").exit_code == 2  # --force needs --reason
    forced = cli(*common, "--gate", "exact_match>=2", "--force", "--reason", "hotfix approved by ops")
    assert forced.exit_code == 0, forced.output
    assert resolve_version(store, "helpdesk").version == 2
    history = describe(store, "helpdesk")["history"]
    assert [(m["action"], m["outcome"]) for m in history] == [("register", "moved"), ("promote", "refused"),
                                                               ("promote", "moved")]
    assert history[1]["gate"]["passed"] is False and history[2]["reason"] == "hotfix approved by ops"
    assert (tmp_path / "gate" / "tasks-0" / "report.html").is_file()

    rolled = cli("models", "rollback", "helpdesk")
    assert rolled.exit_code == 0 and "helpdesk@2 -> helpdesk@1" in rolled.output
    assert resolve_version(store, "helpdesk").version == 1
    shown = cli("models", "show", "helpdesk")
    assert shown.exit_code == 0 and "rollback production: 2 -> 1 moved" in shown.output
    listed = json.loads(cli("models", "list", "--json").stdout)
    assert {r["name"]: r["aliases"] for r in listed if r["kind"] == "version"} == {"helpdesk@1": ["production"],
                                                                                  "helpdesk@2": []}


def test_bad_references_and_nothing_to_roll_back(runs, tmp_path):
    first, _, tasks = runs
    register_run(open_store(), first, "solo", alias="production")
    nothing = cli("models", "rollback", "solo")
    assert nothing.exit_code == 2 and "no previous version" in nothing.output
    assert cli("models", "promote", "solo@7").exit_code == 1
    assert cli("models", "promote", "solo@1").exit_code == 2  # already production
    missing_gate_file = cli("models", "promote", "solo@1", "--to", "candidate", "--tasks", tmp_path / "none.jsonl")
    assert missing_gate_file.exit_code == 0  # no holder of candidate yet: nothing to compare against
    register_run(open_store(), first, "solo")
    no_file = cli("models", "promote", "solo@2", "--tasks", tmp_path / "none.jsonl")
    assert no_file.exit_code == 2 and "file_not_found" in no_file.output
    assert cli("models", "register", tmp_path, "--name", "x").exit_code == 2  # not a run directory
    assert cli("models", "show", "bad name!").exit_code == 2


def test_a_gate_report_against_a_version_that_no_longer_holds_the_alias_is_refused(runs):
    from tunery.platform.registry import PromotionConflict, promote

    first, second, _ = runs
    store = open_store()
    register_run(store, first, "helpdesk", alias="production")
    register_run(store, second, "helpdesk")
    register_run(store, first, "helpdesk")
    promote(store, "helpdesk@3", actor="ops")  # production moved to 3 while the loop gated 2 against 1
    with pytest.raises(PromotionConflict):
        promote(store, "helpdesk@2", actor="loop", gate_report={"passed": True, "baseline": "helpdesk@1"})
    assert resolve_version(store, "helpdesk").version == 3
    last = describe(store, "helpdesk")["history"][-1]
    assert (last["outcome"], last["to_version"], last["gate"]["baseline"]) == ("refused", 2, "helpdesk@1")
    moved = promote(store, "helpdesk@2", actor="loop", gate_report={"passed": True, "baseline": "helpdesk@3"})
    assert moved["gate"]["baseline"] == "helpdesk@3"
    assert describe(store, "helpdesk")["history"][-1]["gate"] == {"passed": True, "baseline": "helpdesk@3"}


@pytest.mark.parametrize(("run_json", "config_yaml", "located"), [
    ("{not json", None, "run.json:1: invalid JSON"),
    ("[1, 2]", None, "run.json: a run.json must be a JSON object"),
    ('{"status": "completed", "lineage": [1]}', None, "field 'lineage' must be an object"),
    ('{"status": "completed"}', "data: [\n", "config.yaml:2: invalid YAML"),
    ('{"status": "completed"}', "- 1\n", "config.yaml: a config must be a mapping"),
    ('{"status": "completed"}', "data: 3\n", "field 'data' must be a mapping"),
    ('{"status": "completed"}', "data: {train: 5}\n", "field 'data.train' must be a file path"),
])
def test_a_damaged_run_directory_is_a_located_error_not_a_traceback(tmp_path, run_json, config_yaml, located):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "run.json").write_text(run_json)
    if config_yaml is not None:
        (tmp_path / "config.yaml").write_text(config_yaml)
    result = cli("models", "register", tmp_path, "--name", "m")
    assert result.exit_code == 2 and located in " ".join(result.output.split()), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_register_checks_the_alias_and_references_check_their_selector(runs):
    first, _, _ = runs
    bad_alias = cli("models", "register", first, "--name", "m", "--alias", "prod\nuction")
    assert bad_alias.exit_code == 2 and "alias" in bad_alias.output
    assert cli("models", "list", "--json").output.count('"m@') == 0  # nothing registered
    register_run(open_store(), first, "m", alias="production")
    assert cli("models", "show", "m@").exit_code == 2  # a dangling @ is not NAME@production
    huge = cli("models", "show", "m@" + "9" * 30)  # past SQLite's integers
    assert huge.exit_code == 1 and "version_not_found" in huge.output


def test_a_gate_without_tasks_or_a_malformed_gate_is_refused_before_anything_moves(runs, tmp_path):
    first, second, tasks = runs
    register_run(open_store(), first, "gated", alias="production")
    register_run(open_store(), second, "gated")
    ungated = cli("models", "promote", "gated@2", "--gate", "exact_match>=0.9")  # would have moved, ungated
    assert ungated.exit_code == 2 and "gate_without_tasks" in ungated.output, ungated.output
    malformed = cli("models", "promote", "gated@2", "--tasks", tasks, "--gate", "exact_match>>0.9")
    assert malformed.exit_code == 2 and "invalid_gate" in malformed.output, malformed.output
    assert resolve_version(open_store(), "gated").ref == "gated@1"


# One gated comparison through the int4 fast lane on the tiny model (the lane's library compiles once).
@pytest.mark.timeout(1800)
def test_promote_with_weights_scores_what_is_served_and_the_audit_records_it(runs, tmp_path):
    first, second, tasks = runs
    store = open_store()
    register_run(store, first, "served", alias="production")
    register_run(store, second, "served")
    assert "--weights" in cli("models", "promote", "--help").output
    unknown = cli("models", "promote", "served@2", "--tasks", tasks, "--weights", "int3")
    assert unknown.exit_code == 2 and "unknown weights format 'int3'" in unknown.output, unknown.output
    unscored = cli("models", "promote", "served@2", "--weights", "int4")  # no tasks: the weights would score nothing
    assert unscored.exit_code == 2 and "weights_without_tasks" in unscored.output, unscored.output
    assert resolve_version(store, "served").ref == "served@1"
    assert [m["outcome"] for m in describe(store, "served")["history"]] == ["moved"]  # refused before any audit row

    moved = cli("models", "promote", "served@2", "--tasks", tasks, "--weights", "int4", "--gate", "exact_match>=0",
                "--out", tmp_path / "gate")
    assert moved.exit_code == 0, moved.output
    assert resolve_version(store, "served").ref == "served@2"
    gate = describe(store, "served")["history"][-1]["gate"]
    assert gate["weights"] == "int4" and [c["decode"] for c in gate["comparisons"]] == ["lane"]
    summary = json.loads((tmp_path / "gate" / "tasks-0" / "summary.json").read_text())
    assert [(m["settings"]["weights"], m["settings"]["decode"]) for m in summary["models"]] == [("int4", "lane")] * 2
    recorded = json.loads((second / "gates.jsonl").read_text().splitlines()[-1])  # what `tunery export` carries
    assert recorded["weights"] == "int4" and recorded["decode"] == "lane" and recorded["passed"]
    shown = cli("models", "show", "served")
    lines = " ".join(shown.output.split())  # the console wraps long lines
    assert "promote production: 1 -> 2 moved by local, gated on int4 weights (lane)" in lines, shown.output
