"""Fixtures for training tests: small invented Q/A conversations and tiny-model configs."""

from __future__ import annotations

import pytest

from tunery.config import TrainConfig
from tunery.types import Conversation, Turn


def make_conversations(n: int, offset: int = 0) -> list[Conversation]:
    """Short question/answer chats of varied lengths (so packing and padding differ)."""
    convs = []
    for i in range(offset, offset + n):
        question = f"What is part {i}?" + " Please answer." * (i % 3)
        convs.append(Conversation(turns=(Turn("user", question), Turn("assistant", f"Part {i} is TX-{i * 7}.", True))))
    return convs


@pytest.fixture
def conversations() -> list[Conversation]:
    return make_conversations(24)


@pytest.fixture
def val_conversations() -> list[Conversation]:
    return make_conversations(6, offset=100)


@pytest.fixture
def make_config(tiny_model_dir, tmp_path):
    """TrainConfig on the tiny model in fp32; keyword groups override sections."""

    def build(name: str = "run", method: str = "lora", **sections) -> TrainConfig:
        train = {"epochs": 2, "batch_size": 4, "learning_rate": 1e-2, "precision": "fp32", "warmup_steps": 1,
                 "seed": 7}
        train.update(sections.pop("train", {}))
        raw = {"base_model": str(tiny_model_dir), "method": method, "output_dir": str(tmp_path / name),
               "train": train, "data": {"val_fraction": 0.0, **sections.pop("data", {})}, **sections}
        return TrainConfig.model_validate(raw)

    return build
