"""QLoRA gradients stay correct after a validation pass (bitsandbytes' CPU inference repacking)."""

from __future__ import annotations

import torch

from tests.training.conftest import make_conversations
from tunery.config import TrainConfig
from tunery.data.packing import pack_examples
from tunery.data.template import encode_conversation
from tunery.training.loss import chunked_loss
from tunery.training.setup import choose_precision, load_for_training


def lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    chunked_loss(model, batch).loss_sum.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_qlora_gradients_are_the_same_before_and_after_an_eval_forward(tiny_model_dir):
    config = TrainConfig.model_validate({"base_model": str(tiny_model_dir), "method": "qlora",
                                         "train": {"precision": "fp32", "seed": 3}})
    precision = choose_precision("fp32", "qlora", "cpu")
    model, tokenizer = load_for_training(config, precision, "cpu")
    batch = pack_examples([encode_conversation(tokenizer, c) for c in make_conversations(4)])
    before = lora_grads(model, batch)
    model.eval()
    with torch.no_grad():
        chunked_loss(model, batch)  # what validation does between training steps
    model.train()
    after = lora_grads(model, batch)
    lowest = [n for n in before if "layers.0." in n and "lora_B" in n]
    assert lowest and all(before[n].abs().sum() > 0 for n in lowest)
    for name in before:
        assert torch.allclose(before[name], after[name], atol=1e-6), name
