"""Strict training configs: typos fail at once naming the key, its line and the closest valid key."""

from __future__ import annotations

import pytest

from tunery.config import TrainConfig, describe_fields, dump_config, load_train_config
from tunery.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "train.yaml"
    path.write_text(text)
    return path


def test_defaults_are_complete_and_documented():
    config = load_train_config()
    assert config.method == "lora" and config.train.learning_rate == "auto"
    rows = describe_fields()
    keys = {key for key, _, _ in rows}
    required = {"base_model", "method", "data.train", "data.validation", "data.val_fraction", "data.max_seq_len",
                "data.packing", "data.too_long", "lora.rank", "lora.alpha", "lora.dropout", "lora.targets",
                "lora.use_dora", "train.epochs", "train.max_steps", "train.batch_size", "train.grad_accum",
                "train.learning_rate", "train.lr_schedule", "train.warmup_steps", "train.weight_decay",
                "train.max_grad_norm", "train.seed", "train.precision", "train.gradient_checkpointing",
                "train.eval_every_steps", "train.save_every_steps", "train.keep_checkpoints",
                "train.early_stopping_patience", "init_from", "output_dir"}
    assert required <= keys
    assert all(description for _, _, description in rows)


def test_misspelt_nested_key_names_line_and_suggestion(tmp_path):
    path = write(tmp_path, "method: lora\ntrain:\n  epochs: 3\n  learnig_rate: 1e-4\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    text = str(info.value)
    assert f"{path}:4: unknown key 'train.learnig_rate'" in text
    assert "did you mean 'train.learning_rate'?" in text
    assert info.value.exit_code == 2


def test_misspelt_top_level_key_and_aliases():
    with pytest.raises(ConfigError, match=r"unknown key 'methd' \(did you mean 'method'\?\)"):
        load_train_config(overrides=["methd=full"])
    with pytest.raises(ConfigError, match=r"did you mean 'train.learning_rate'\?"):
        load_train_config(overrides=["train.lr=0.1"])
    with pytest.raises(ConfigError, match=r"did you mean 'lora.rank'\?"):
        load_train_config(overrides=["lora.r=8"])


def test_bad_values_name_the_field_once(tmp_path):
    path = write(tmp_path, "method: qlorra\ntrain:\n  epochs: many\n")
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    text = str(info.value)
    assert f"{path}:1: method" in text and "'full', 'lora' or 'qlora'" in text
    assert text.count("train.epochs") == 1


def test_overrides_are_dotted_and_typed(tmp_path):
    path = write(tmp_path, "data:\n  train: data/train.jsonl\n")
    config = load_train_config(path, ["method=qlora", "train.max_steps=30", "train.learning_rate=1e-4",
                                      "lora.targets=[q_proj, v_proj]", "data.packing=false"])
    assert config.method == "qlora" and config.train.max_steps == 30
    assert config.train.learning_rate == pytest.approx(1e-4)
    assert config.lora.targets == ["q_proj", "v_proj"] and config.data.packing is False
    assert config.data.train == str((tmp_path / "data" / "train.jsonl").resolve())


def test_invalid_yaml_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"train.yaml:3: invalid YAML"):
        load_train_config(write(tmp_path, "method: lora\ntrain: [1, 2\nseed: 3\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_train_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_train_config(overrides=["method"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config(tmp_path / "missing.yaml")


def test_dumped_config_round_trips(tmp_path):
    config = load_train_config(overrides=["train.epochs=2", "name=demo"])
    path = write(tmp_path, dump_config(config))
    assert load_train_config(path) == config
    assert TrainConfig.model_validate(config.model_dump()) == config


def test_docs_config_reference_is_current():
    from pathlib import Path

    from tunery.config import render_config_reference

    docs = (Path(__file__).parents[1] / "docs" / "training.md").read_text()
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    embedded = docs[docs.index(start) + len(start):docs.index(end)]
    assert embedded == render_config_reference(), "regenerate docs/training.md's config reference"
