"""`lora.layers: auto` for facts: the loop's time from LoRA steps timed on a random copy of the decoder."""

from __future__ import annotations

import json

import pytest
import torch

from tunery.config import LoraConfig, TrainConfig
from tunery.training.auto import FACT_TRAIN_BUDGET_S, TrainingWork, resolve_lora_layers
from tunery.training.precision import Precision
from tunery.training.step_probe import StepTime, measure_step_time
from tunery.types import TokenizedExample

FP32 = Precision(torch.float32, torch.float32, "test", None)


def tiny_config(tiny_model_dir) -> dict:
    return json.loads((tiny_model_dir / "config.json").read_text())


def test_steps_are_timed_on_a_random_decoder_of_the_models_shape(tiny_model_dir):
    state = torch.random.get_rng_state()
    step = measure_step_time(tiny_config(tiny_model_dir), lora=LoraConfig(rank=4), precision=FP32,
                             examples_per_step=2, tokens_per_example=24, trained_per_example=6)
    assert step is not None and step.examples_per_step == 2
    assert step.fixed_s > 0 and step.per_layer_s >= 0 and step.frozen_layer_s >= 0
    assert torch.equal(torch.random.get_rng_state(), state)  # the run's seeded draws are not disturbed


def test_a_config_transformers_cannot_build_keeps_the_flop_estimate():
    no_type = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    assert measure_step_time(no_type, lora=LoraConfig(), precision=FP32, examples_per_step=2,
                             tokens_per_example=10, trained_per_example=2) is None
    unknown = {**no_type, "model_type": "no-such-architecture"}
    assert measure_step_time(unknown, lora=LoraConfig(), precision=FP32, examples_per_step=2,
                             tokens_per_example=10, trained_per_example=2) is None


def test_the_loop_time_counts_every_step_through_the_adapted_layers_and_frozen_ones_once_per_example():
    step = StepTime(fixed_s=0.1, per_layer_s=0.01, frozen_layer_s=0.002, examples_per_step=2)
    # 100 steps through 10 adapted layers; 40 examples through the 20 frozen layers below, 2 a row
    assert step.loop_seconds(100, 10, 30, 40) == pytest.approx(100 * (0.1 + 10 * 0.01) + 20 * 20 * 0.002)
    times = [step.loop_seconds(100, n, 30, 40) for n in range(1, 31)]
    assert times == sorted(times)


def test_timed_steps_decide_the_layers_where_the_flop_count_would_overshoot():
    """On a CPU where products are fast the FLOP count says every layer fits; timed steps say how many do."""
    flops = TrainingWork(num_layers=30, layer_params=3_538_944, head_params=28_311_552, tokens_per_pass=87_000,
                         trained_tokens_per_pass=25_000, passes=3, flops_per_s=1.6e12)
    everything, _ = resolve_lora_layers(LoraConfig(), method="lora", num_layers=30, facts=True, work=flops)
    assert everything.layers == "all"
    slow_steps = StepTime(fixed_s=0.08, per_layer_s=0.008, frozen_layer_s=0.003, examples_per_step=2)
    timed = TrainingWork(**{**vars(flops), "step_time": slow_steps, "steps": 2250, "num_examples": 1500})
    chosen, choices = resolve_lora_layers(LoraConfig(), method="lora", num_layers=30, facts=True, work=timed)
    assert isinstance(chosen.layers, int) and 10 < chosen.layers < 30
    assert timed.seconds(chosen.layers) <= FACT_TRAIN_BUDGET_S < timed.seconds(chosen.layers + 1)
    assert "timed here" in choices[0].reason and "8 ms per adapted layer" in choices[0].reason


def test_a_cpu_run_on_a_buildable_model_times_its_steps(tiny_model_dir):
    from tunery.training.run import fact_work

    examples = [TokenizedExample(input_ids=[5] * 12, labels=[-100] * 8 + [5] * 4)] * 6
    config = TrainConfig.model_validate({"data": {"train": "x.jsonl"}})
    settings = config.train.model_copy(update={"batch_size": 2, "epochs": 3, "learning_rate": 1e-3})
    precision = Precision(torch.float32, torch.float32, "measured", {"fp32": 1e10, "bf16": 5e9})
    work = fact_work(config, settings, examples, tiny_config(tiny_model_dir), precision, "cpu", 1)
    assert work is not None and work.step_time is not None
    assert (work.steps, work.num_examples, work.step_time.examples_per_step) == (9, 6, 2)
    assert work.seconds(2) == pytest.approx(work.step_time.loop_seconds(9, 2, 2, 6))

