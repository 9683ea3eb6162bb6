"""QLoRA gradients stay correct after a validation pass (bitsandbytes' CPU inference repacking)."""

from __future__ import annotations

import torch

from tests.training.conftest import make_conversations
from tunery.config import TrainConfig
from tunery.data.packing import pack_examples
from tunery.data.template import encode_conversation
from tunery.training.batch_loss import chunked_loss
from tunery.training.precision import choose_precision
from tunery.training.trainable_model import load_for_training


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


def test_a_4bit_load_lets_go_of_the_weights_file(tmp_path):
    """The file's pages are not kept resident through leftover views once the weights are quantized."""
    from tests.conftest import build_tiny_model
    from tunery.models import load_model

    folder = build_tiny_model(tmp_path / "tiny")
    weights = str((folder / "model.safetensors").resolve())
    model, _ = load_model(str(folder), dtype="fp32", load_in_4bit=True, device="cpu")
    mapped = [line for line in open("/proc/self/maps", encoding="utf-8") if line.rstrip().endswith(weights)]
    assert mapped == []
    reference, _ = load_model(str(folder), dtype="fp32", device="cpu")  # unquantized: the mapping is the weights
    assert any(line.rstrip().endswith(weights) for line in open("/proc/self/maps", encoding="utf-8"))
    assert any(p.dtype == torch.uint8 for p in model.parameters())  # the first load did quantize
