"""`tunery train`, `tunery config validate|show` through the real CLI entry point."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from tunery.cli import _register, app

_register()
runner = CliRunner()


def write_dataset(path, n=16):
    with open(path, "w") as handle:
        for i in range(n):
            messages = [{"role": "user", "content": f"Code for site {i}?"},
                        {"role": "assistant", "content": f"Site {i} uses code ZX-{i * 13}."}]
            handle.write(json.dumps({"messages": messages}) + "\n")
    return path


def write_config(tmp_path, tiny_model_dir):
    write_dataset(tmp_path / "train.jsonl")
    config = {"base_model": str(tiny_model_dir), "method": "lora", "data": {"train": "train.jsonl", "val_fraction": 0.25},
              "train": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "precision": "fp32"}}
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_with_overrides_and_json_logs(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", str(config), f"output_dir={out}", "train.max_steps=2", "--json-logs"])
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["type"] == "train"] == [1, 2]
    assert events[0]["type"] == "start" and events[-1]["type"] == "summary"
    assert any(e["type"] == "val" for e in events)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["train"]["warmup_steps"] == 0  # auto resolved and saved
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["hyperparameters"]["batch_size"] == 4
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_events = [m for m in metrics if m["type"] == "train"]
    assert {"step", "epoch", "loss", "lr", "tokens_per_s"} <= set(train_events[0])


def test_resume_refuses_a_completed_run(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir)
    out = tmp_path / "out"
    assert runner.invoke(app, ["train", str(config), f"output_dir={out}", "train.max_steps=1", "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["train", "--resume", str(out)])
    assert result.exit_code == 2 and "run_completed" in result.output


def test_config_validate_and_show(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir)
    assert runner.invoke(app, ["config", "validate", str(config)]).exit_code == 0
    bad = runner.invoke(app, ["config", "validate", str(config), "train.batch_sise=4"])
    assert bad.exit_code == 2
    assert "unknown key 'train.batch_sise'" in bad.output and "train.batch_size" in bad.output
    assert "Traceback" not in bad.output
    shown = runner.invoke(app, ["config", "show", str(config), "method=qlora"])
    assert shown.exit_code == 0
    resolved = yaml.safe_load(shown.stdout)
    assert resolved["method"] == "qlora" and resolved["lora"]["rank"] == 16 and resolved["train"]["seed"] == 42
    alone = runner.invoke(app, ["config", "show", "method=qlora", "train.seed=7"])  # no file: defaults + overrides
    assert alone.exit_code == 0, alone.output
    assert yaml.safe_load(alone.stdout)["train"]["seed"] == 7 and yaml.safe_load(alone.stdout)["method"] == "qlora"
    valid = runner.invoke(app, ["config", "validate", f"base_model={tiny_model_dir}", "data.train=x.jsonl"])
    assert valid.exit_code == 0 and "the overrides: valid" in valid.output, valid.output
    typo = runner.invoke(app, ["config", "validate", "train.batch_sise=4"])
    assert typo.exit_code == 2 and "train.batch_size" in typo.output
    assert runner.invoke(app, ["config", "validate"]).exit_code == 2


def test_enabled_metric_sink_that_is_not_installed_is_a_config_error(tmp_path, tiny_model_dir):
    import importlib.util

    config = write_config(tmp_path, tiny_model_dir)
    assert importlib.util.find_spec("mlflow") is None  # the point of this test: enabled but absent
    result = runner.invoke(app, ["train", str(config), f"output_dir={tmp_path / 'out'}", "logging.mlflow=true"])
    assert result.exit_code == 2 and "missing_package" in result.output and "pip install mlflow" in result.output


def test_fsdp_outside_torchrun_is_a_config_error(tmp_path, tiny_model_dir):
    config = write_config(tmp_path, tiny_model_dir)
    result = runner.invoke(app, ["train", str(config), "train.fsdp=true", "method=full"])
    assert result.exit_code == 2 and "fsdp_single_process" in result.output


def test_train_from_overrides_alone(tmp_path, tiny_model_dir):
    """No YAML file: KEY=VALUE overrides start from the defaults; an argument that is neither says so."""
    data = write_dataset(tmp_path / "train.jsonl")
    out = tmp_path / "out"
    result = runner.invoke(app, ["train", f"base_model={tiny_model_dir}", f"data.train={data}", f"output_dir={out}",
                                 "train.max_steps=1", "train.precision=fp32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["train"] == str(data)
    nothing = runner.invoke(app, ["train"])
    assert nothing.exit_code == 2 and "no config given" in nothing.output
    missing = runner.invoke(app, ["train", str(tmp_path / "nofile.yaml")])
    assert missing.exit_code != 0 and "nofile.yaml does not exist" in missing.output
    typo = runner.invoke(app, ["train", f"base_model={tiny_model_dir}", f"data.train={data}", "train.lr=1"])
    assert typo.exit_code == 2 and "train.learning_rate" in typo.output and "Traceback" not in typo.output
