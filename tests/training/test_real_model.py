"""Short runs on the real default model: LoRA (PEFT-loadable, same logits), QLoRA, and fact recall."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import tunery
from tests.training.conftest import assert_peft_loads_like_tunery
from tunery.config import TrainConfig

ROOT = Path(__file__).parents[2]
HELPDESK = ROOT / "examples" / "helpdesk"


def load_facts_module(name: str):
    spec = importlib.util.spec_from_file_location(f"facts_{name}", ROOT / "examples" / "facts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def helpdesk_config(tmp_path, name: str, method: str, steps: int) -> TrainConfig:
    subset = tmp_path / "train.jsonl"
    subset.write_text("".join((HELPDESK / "train.jsonl").read_text().splitlines(keepends=True)[:24]))
    return TrainConfig.model_validate({
        "base_model": "smollm2-135m-instruct", "method": method, "output_dir": str(tmp_path / name),
        "data": {"train": str(subset), "val_fraction": 0.25, "max_seq_len": 384},
        "train": {"max_steps": steps, "batch_size": 4, "learning_rate": 1e-3, "precision": "fp32"},
    })


@pytest.mark.slow
def test_lora_on_the_default_model_loads_in_peft_with_the_same_logits(default_model_dir, tmp_path):
    result = tunery.train(helpdesk_config(tmp_path, "lora", "lora", steps=3), quiet=True)
    assert result.status == "completed"
    assert result.metrics["val_loss"] < result.metrics["initial_val_loss"]
    assert_peft_loads_like_tunery(default_model_dir, result.run_dir, "My VPN token expired and I cannot log in.",
                                  atol=1e-4)
    assert (result.run_dir / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (result.run_dir / "tokenizer_config.json").read_text())


@pytest.mark.slow
def test_qlora_on_the_default_model(default_model_dir, tmp_path):
    result = tunery.train(helpdesk_config(tmp_path, "qlora", "qlora", steps=2), quiet=True)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["status"] == "completed" and run["method"] == "qlora"
    assert result.metrics["val_loss"] < result.metrics["initial_val_loss"]
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_all_auto_training_recalls_invented_facts(default_model_dir, tmp_path):
    """The facts benchmark at reduced size: 12 facts, every setting on auto, asked as trained and reworded.

    The reworded questions (examples/facts: another verb, another word order) are never trained;
    `data.augment: auto` trains each question in 6 wordings (4 rewordings, the question as written twice), 3 epochs.
    """
    load_facts_module("generate").write_files(tmp_path / "facts", per_kind=3)
    measure = load_facts_module("measure")
    report = measure.train_and_measure(tmp_path / "facts", [f"output_dir={tmp_path / 'run'}"], quiet=True)
    assert set(report["auto"]) >= {"data.augment", "train.epochs", "train.batch_size", "train.learning_rate"}
    assert report["auto"]["train.epochs"] == 3 and report["steps"] == 108  # 18 passes per fact, 6 of them as written
    assert report["recall_trained"]["exact"] >= 0.9, report["recall_trained"]
    assert report["recall_reworded"]["key"] >= 0.5, report["recall_reworded"]
