"""Calibration for int4 rounding: a few built-in chat exchanges run once through the full-precision
model, and each linear layer's mean squared input per channel (how much an error in each weight
column moves the layer's output). Knows models, hooks and the chat template; nothing of rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from tunery.data.template import encode_prompt

# Short and varied (support, prose, code, JSON, lists), in the shape served requests take.
CALIBRATION_CHATS = [
    ("My laptop will not connect to the office Wi-Fi since this morning. What should I try?",
     "First forget the network and join it again, then restart the laptop. If it still fails, check whether "
     "other devices connect, and open a ticket with the error message shown."),
    ("Write a Python function that returns the n-th Fibonacci number.",
     "def fibonacci(n: int) -> int:\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"),
    ("Classify this ticket as JSON with category and priority: the payroll database is down for everyone.",
     '{"category": "data", "priority": "P1", "team": "storage-backup", "summary": "Payroll database outage."}'),
    ("Explain in two sentences what DNS does.",
     "DNS translates names such as example.com into the IP addresses computers use to reach each other. "
     "Without it you would have to remember numbers for every site."),
    ("Summarise: the backup failed twice last night because the disk was full, and the on-call engineer "
     "freed space at 6 am.", "The nightly backup failed twice on a full disk; space was freed at 6 am."),
    ("List three things to check when a printer shows 'offline'.",
     "1. The power and network cables.\n2. That it has an IP address and responds to ping.\n3. The print queue "
     "on the computer, cleared of stuck jobs."),
    ("Translate to French: The meeting is moved to Thursday at ten.", "La réunion est déplacée à jeudi à dix heures."),
    ("What is 17 times 23? Show the steps.", "17 x 23 = 17 x 20 + 17 x 3 = 340 + 51 = 391."),
]


def calibration_ids(tokenizer) -> list[list[int]]:
    """The built-in exchanges as token ids, through the model's chat template."""
    return [encode_prompt(tokenizer, [{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer}]) for question, answer in CALIBRATION_CHATS]


def input_importance(model: nn.Module, sequences: list[list[int]], layers: dict[str, nn.Linear],
                     ) -> dict[str, torch.Tensor]:
    """Per layer name, the mean over the sequences' tokens of each input channel's squared value [in_features]."""
    sums = {name: torch.zeros(layer.in_features) for name, layer in layers.items()}
    counts = dict.fromkeys(layers, 0)

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].detach().float().reshape(-1, sums[name].numel())
            sums[name] += x.square().sum(0).cpu()
            counts[name] += x.shape[0]
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            for ids in sequences:
                model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / max(counts[name], 1) for name in layers}
