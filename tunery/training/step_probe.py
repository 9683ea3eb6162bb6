"""How long a LoRA step takes on this machine, timed on a small random copy of the model's decoder.

`lora.layers: auto` gives fact-like data the most adapted layers whose training fits a time budget.
A FLOP count over the measured matmul rate misses what dominates a step on short rows: the fixed cost
of each of a layer's few dozen operations forward and backward. Where bf16 products are fast (AMX), a
60-token product costs little more than its call, and the FLOP estimate for the 300 bundled facts
(311 s for every layer) was a quarter of the real loop (about 1300 s).

So the step is timed: the model's own config with 1 and with 3 decoder layers (random weights, the
run's precision, LoRA settings and CPU kernels), a packed row of the run's mean examples per step,
forward, backward and the optimizer step, the two sizes in turn, a few times each after a warm-up
(medians kept). The two sizes give what one more adapted layer adds to a step and what the rest of
the step (embedding, head on the answer tokens, loss, optimizer, Python) costs; the frozen layers'
forward, once per example, is timed on a row packed as the training packs it (tunery.training.prefix:
about GROUP_TOKENS tokens). A few seconds; None where the model cannot be
built from its config (then the FLOP estimate stands).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from statistics import median

import torch

from tunery.config import LoraConfig
from tunery.data.packing import make_batch
from tunery.training.batch_loss import compute_loss
from tunery.training.cpu_kernels import cpu_kernels
from tunery.training.optim import build_optimizer
from tunery.training.precision import Precision
from tunery.training.prefix import GROUP_TOKENS
from tunery.training.trainable_model import attach_lora, decoder_layers, trainable_parameters
from tunery.types import TokenizedExample

PROBE_LAYERS = (1, 3)
WARMUP_STEPS, TIMED_STEPS = 2, 6


@dataclass(frozen=True)
class StepTime:
    """Seconds of one optimizer step on this machine, split by what scales with the adapted layers."""

    fixed_s: float  # embedding, head and loss on the answer tokens, optimizer step, Python
    per_layer_s: float  # one adapted decoder layer, forward and backward
    frozen_layer_s: float  # one frozen layer's forward over a row of examples_per_forward examples (no gradient)
    examples_per_step: int
    examples_per_forward: int = 0  # 0: examples_per_step

    def loop_seconds(self, steps: int, adapted: int, num_layers: int, num_examples: int) -> float:
        """The loop: every step through the adapted layers; the frozen layers below once per example."""
        frozen_passes = num_examples / max(1, self.examples_per_forward or self.examples_per_step)
        return (steps * (self.fixed_s + adapted * self.per_layer_s)
                + frozen_passes * (num_layers - adapted) * self.frozen_layer_s)


def measure_step_time(model_config: dict, *, lora: LoraConfig, precision: Precision, examples_per_step: int,
                      tokens_per_example: int, trained_per_example: int, kernels: bool = True) -> StepTime | None:
    """Time LoRA steps of a random `model_config` decoder on this CPU (see the module docstring).

    The two sizes take turns step by step, so another process taking the cores slows both alike; a
    measurement that says a layer costs nothing (the machine's load changed under it) is not used.
    """
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        probes = [_Probe(model_config, layers, lora=lora, precision=precision, rows=examples_per_step,
                         length=tokens_per_example, trained=trained_per_example) for layers in PROBE_LAYERS]
        steps: dict[int, list[float]] = {p.layers: [] for p in probes}
        forwards: dict[int, list[float]] = {p.layers: [] for p in probes}
        with contextlib.ExitStack() as stack:
            for p in probes:
                stack.enter_context(cpu_kernels(p.model, p.optimizer, kernels))
            for n in range(WARMUP_STEPS + TIMED_STEPS):
                for p in probes if n % 2 == 0 else reversed(probes):
                    step, forward = p.step(), p.forward()
                    if n >= WARMUP_STEPS:
                        steps[p.layers].append(step)
                        forwards[p.layers].append(forward)
    except Exception:  # an architecture transformers cannot build from its config alone: keep the estimate
        return None
    finally:
        torch.random.set_rng_state(generator_state)
    low, high = PROBE_LAYERS
    per_layer = (median(steps[high]) - median(steps[low])) / (high - low)
    frozen = (median(forwards[high]) - median(forwards[low])) / (high - low)
    if per_layer <= 0:
        return None
    return StepTime(fixed_s=max(0.0, median(steps[low]) - low * per_layer), per_layer_s=per_layer,
                    frozen_layer_s=max(0.0, frozen), examples_per_step=examples_per_step,
                    examples_per_forward=probes[0].forward_examples)


class _Probe:
    """A random decoder of `layers` layers with LoRA on every one, and a packed row of training examples."""

    def __init__(self, model_config: dict, layers: int, *, lora: LoraConfig, precision: Precision, rows: int,
                 length: int, trained: int):
        from transformers import AutoConfig, AutoModelForCausalLM

        skip = ("architectures", "auto_map", "quantization_config")
        fields = {k: v for k, v in model_config.items() if k not in skip}
        config = AutoConfig.for_model(**{**fields, "num_hidden_layers": layers})
        self.layers = layers
        model = AutoModelForCausalLM.from_config(config, dtype=precision.weights)
        self.model = attach_lora(model, lora.model_copy(update={"layers": "all", "dropout": 0.0}))
        self.model.train()
        vocab = int(model_config.get("vocab_size") or 1000)
        length, trained = max(2, length), max(1, min(trained, length - 1))
        examples = [TokenizedExample(input_ids=torch.randint(0, vocab, (length,)).tolist(),
                                     labels=[-100] * (length - trained) + torch.randint(0, vocab, (trained,)).tolist())
                    for _ in range(max(1, rows))]
        self.batch = make_batch(examples, packing=True, pad_token_id=0)
        # the frozen layers' forward runs on groups of examples packed to about GROUP_TOKENS tokens
        self.forward_examples = max(len(examples), GROUP_TOKENS // length)
        self.forward_batch = make_batch((examples * self.forward_examples)[:self.forward_examples], packing=True,
                                        pad_token_id=0)
        self.optimizer = build_optimizer(trainable_parameters(self.model), learning_rate=1e-5, weight_decay=0.0)
        self.precision = precision

    def autocast(self):
        return torch.autocast("cpu", dtype=self.precision.compute, enabled=self.precision.compute != torch.float32)

    def step(self) -> float:
        """Seconds of one training step: forward, backward, optimizer."""
        started = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            sums = compute_loss(self.model, self.batch)
        (sums.loss_sum / max(1, self.batch.num_trained_tokens)).backward()
        self.optimizer.step()
        return time.perf_counter() - started

    def forward(self) -> float:
        """Seconds of a no-grad forward through the decoder's layers (no head): what a frozen layer costs."""
        decoder = self.model.get_decoder() if hasattr(self.model, "get_decoder") else None
        if decoder is None or decoder_layers(self.model) is None:
            return 0.0
        started = time.perf_counter()
        with torch.no_grad(), self.autocast():
            decoder(input_ids=self.forward_batch.input_ids, position_ids=self.forward_batch.position_ids)
        return time.perf_counter() - started
