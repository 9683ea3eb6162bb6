"""Fixtures for training tests: small invented Q/A conversations and tiny-model configs."""

from __future__ import annotations

import pytest
import torch

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


def assert_peft_loads_like_tunery(base_dir, run_dir, text: str, atol: float) -> torch.Tensor:
    """The run's adapter/ loaded by PEFT on a fresh base gives tunery's own logits; returns them."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.models import load_model

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(run_dir / "adapter")).eval()
    ours, tokenizer = load_model(str(run_dir), dtype="fp32", device="cpu")
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        got = ours(input_ids=ids).logits
        assert torch.allclose(peft_model(input_ids=ids).logits, got, atol=atol)
    return got
