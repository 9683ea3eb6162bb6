"""What the parity tests compare against: a model's dequantized twin, and a token-by-token check that
a backend's greedy output is what the reference model would have picked (up to near ties)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from tunery.inference.quant import QuantizedLinear, replace_module


def dequantized_copy(model: nn.Module) -> nn.Module:
    """The quantized model with every quantized layer written out as an fp32 nn.Linear: what the
    fast lane computes, up to its rounding of activations."""
    reference = copy.deepcopy(model)
    for name, module in list(reference.named_modules()):
        if isinstance(module, QuantizedLinear):
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            linear.weight.data = module.dequantized_weight()
            if module.bias is not None:
                linear.bias.data = module.bias.clone()
            replace_module(reference, name, linear)
    return reference


def spread(logits: torch.Tensor) -> torch.Tensor:
    return logits.max(-1).values - logits.min(-1).values


def generated_tokens(engine) -> dict[int, list[int]]:
    """Instrument the engine: every token each request accepts, by request id."""
    tokens: dict[int, list[int]] = {}
    accept = engine._accept

    def record(seq, token):
        tokens.setdefault(seq.id, []).append(token)
        accept(seq, token)

    engine._accept = record
    return tokens


def assert_follows(reference, ids: list[int], tokens: list[int], tie: float = 0.02) -> None:
    """Each token is the reference's argmax given the tokens before it, or within `tie` of the spread of it."""
    with torch.no_grad():
        logits = reference(torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1]
    picked = logits.gather(1, torch.tensor(tokens)[:, None])[:, 0]
    best = logits.max(-1).values
    assert (picked >= best - tie * spread(logits)).all()


def with_adapter(reference: nn.Module, adapter_dir) -> nn.Module:
    """A copy of a plain reference model with a PEFT adapter merged into its weights (fp32)."""
    from tunery.inference.lora import read_peft_adapter

    merged = copy.deepcopy(reference)
    for name, (lora_a, lora_b, scale) in read_peft_adapter(adapter_dir).modules.items():
        linear = merged.get_submodule(name)
        linear.weight.data += scale * lora_b.float() @ lora_a.float()
    return merged
