"""Adapters in the top layers only, and the kept outputs of the frozen layers below them."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

import tunery
import tunery.training.prefix as prefix_module
from tests.training.conftest import assert_peft_loads_like_tunery
from tests.training.test_loop import adapter_weights, assert_same_weights, train_losses
from tunery.config import LoraConfig
from tunery.data.template import IGNORE_INDEX
from tunery.training.auto import FACT_TRAIN_BUDGET_S, TrainingWork, resolve_lora_layers, training_work
from tunery.types import TokenizedExample


def test_auto_adapts_the_top_third_for_facts_and_every_layer_otherwise():
    lora, choices = resolve_lora_layers(LoraConfig(), method="lora", num_layers=30, facts=True)
    assert lora.layers == 10 and choices[0].key == "lora.layers" and "top 10 of 30" in choices[0].reason
    lora, choices = resolve_lora_layers(LoraConfig(), method="qlora", num_layers=30, facts=False)
    assert lora.layers == "all" and choices[0].value == "all"
    assert resolve_lora_layers(LoraConfig(layers=4), method="lora", num_layers=30, facts=True) == (LoraConfig(layers=4), [])
    assert resolve_lora_layers(LoraConfig(), method="full", num_layers=30, facts=True)[1] == []
    assert resolve_lora_layers(LoraConfig(), method="lora", num_layers=2, facts=True)[0].layers == "all"


# The bundled 300 facts in 5 wordings (tokens of every example, answer tokens) and the CI test's 12.
BUNDLED_FACTS, TWELVE_FACTS = (90_927, 25_130), (3_701, 1_040)
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                "num_key_value_heads": 3, "vocab_size": 49152}


def fact_work(tokens: tuple[int, int], gflops_per_s: float) -> TrainingWork:
    return TrainingWork(num_layers=30, layer_params=3_538_944, head_params=28_311_552, tokens_per_pass=tokens[0],
                        trained_tokens_per_pass=tokens[1], passes=3, flops_per_s=gflops_per_s * 1e9)


def test_auto_adapts_as_many_layers_to_facts_as_this_machines_speed_fits_in_the_budget():
    """fp32 keeps the top third; bf16 measured 4.4x faster adapts more; a dozen facts adapt every layer."""
    slow, _ = resolve_lora_layers(LoraConfig(), method="lora", num_layers=30, facts=True,
                                  work=fact_work(BUNDLED_FACTS, 175))
    assert slow.layers == 10
    fast_work = fact_work(BUNDLED_FACTS, 760)
    fast, choices = resolve_lora_layers(LoraConfig(), method="lora", num_layers=30, facts=True, work=fast_work)
    assert isinstance(fast.layers, int) and 10 < fast.layers < 30
    assert fast_work.seconds(fast.layers) <= FACT_TRAIN_BUDGET_S < fast_work.seconds(fast.layers + 1)
    assert "760 GFLOP/s measured" in choices[0].reason
    few, choices = resolve_lora_layers(LoraConfig(), method="lora", num_layers=30, facts=True,
                                       work=fact_work(TWELVE_FACTS, 60))
    assert few.layers == "all" and choices[0].value == "all"
    # the estimate never overrides a choice the user made, nor data that is not fact-like
    assert resolve_lora_layers(LoraConfig(layers=4), method="lora", num_layers=30, facts=True,
                               work=fast_work)[0].layers == 4
    assert resolve_lora_layers(LoraConfig(), method="lora", num_layers=30, facts=False,
                               work=fast_work)[0].layers == "all"


def test_the_training_time_estimate_counts_what_the_step_computes():
    work = fact_work(BUNDLED_FACTS, 100)
    times = [work.seconds(n) for n in range(1, 31)]
    assert times == sorted(times)  # every adapted layer adds a backward pass in each of the 3 passes
    # twice the measured rate, half the time; the frozen layers run once, the adapted ones every pass
    assert fact_work(BUNDLED_FACTS, 200).seconds(10) == pytest.approx(work.seconds(10) / 2)
    once = TrainingWork(**{**vars(work), "passes": 1})
    assert work.seconds(30) == pytest.approx(3 * once.seconds(30))


def test_training_work_reads_the_decoder_shape_and_the_tokens():
    examples = [TokenizedExample(input_ids=[1] * 10, labels=[IGNORE_INDEX] * 6 + [1] * 4)] * 3
    work = training_work(SMOLLM2_135M, examples, passes=15, flops_per_s=1e11)
    assert work is not None
    assert (work.layer_params, work.head_params) == (3_538_944, 49152 * 576)  # q, k, v, o and the MLP; the head
    assert (work.tokens_per_pass, work.trained_tokens_per_pass, work.passes) == (30, 12, 15)
    assert training_work(SMOLLM2_135M, examples, passes=15, flops_per_s=None) is None  # not measured (CUDA)


def test_a_run_estimates_lora_on_auto_layers_only(tmp_path):
    """The rate is the precision's own measurement; QLoRA, a chosen layer count and FSDP are not estimated."""
    from tunery.config import TrainConfig
    from tunery.training.precision import Precision
    from tunery.training.run import fact_work as run_fact_work

    examples = [TokenizedExample(input_ids=[1] * 10, labels=[1] * 10)] * 8
    precision = Precision(torch.bfloat16, torch.bfloat16, "measured", {"fp32": 1e11, "bf16": 4e11})

    def work(**sections):
        config = TrainConfig.model_validate({"data": {"train": "x.jsonl"}, **sections})
        settings = config.train.model_copy(update={"batch_size": 2, "epochs": 3, "learning_rate": 1e-3})
        return run_fact_work(config, settings, examples, SMOLLM2_135M, precision, "cpu", 1)

    chosen = work()
    assert chosen is not None and (chosen.flops_per_s, chosen.passes, chosen.tokens_per_pass) == (4e11, 3, 80)
    assert work(method="qlora") is None and work(lora={"layers": 10}) is None


def test_kept_frozen_outputs_give_the_same_training_as_running_every_layer(make_config, conversations, monkeypatch):
    computed = []
    real_compute = prefix_module.FrozenPrefix._compute

    def counting(self, model, examples, group):
        computed.extend(group)
        return real_compute(self, model, examples, group)

    monkeypatch.setattr(prefix_module.FrozenPrefix, "_compute", counting)
    sections = {"lora": {"layers": 1}, "train": {"epochs": 3}}
    kept = tunery.train(make_config("kept", **sections), train_conversations=conversations, quiet=True)
    assert sorted(computed) == list(range(len(conversations)))  # once per example, not once per epoch
    monkeypatch.setattr(prefix_module, "MAX_BYTES", 0)  # too big to keep: every step runs every layer
    plain = tunery.train(make_config("plain", **sections), train_conversations=conversations, quiet=True)
    assert json.loads((kept.run_dir / "run.json").read_text())["reused_frozen_layers"] == 1
    assert json.loads((plain.run_dir / "run.json").read_text())["reused_frozen_layers"] == 0
    assert train_losses(kept.run_dir) == pytest.approx(train_losses(plain.run_dir), abs=1e-5)
    weights = adapter_weights(kept.run_dir)
    assert_same_weights(weights, adapter_weights(plain.run_dir), atol=1e-5)
    assert weights and all(".layers.1." in name for name in weights)  # nothing in the frozen layer 0
    assert train_losses(kept.run_dir)[-1] < train_losses(kept.run_dir)[0]


def test_kept_outputs_fill_padded_batches_too(make_config, conversations, monkeypatch):
    sections = {"lora": {"layers": 1}, "data": {"packing": False}}
    kept = tunery.train(make_config("kept", **sections), train_conversations=conversations, quiet=True)
    monkeypatch.setattr(prefix_module, "MAX_BYTES", 0)
    plain = tunery.train(make_config("plain", **sections), train_conversations=conversations, quiet=True)
    assert json.loads((kept.run_dir / "run.json").read_text())["reused_frozen_layers"] == 1
    assert train_losses(kept.run_dir) == pytest.approx(train_losses(plain.run_dir), abs=1e-5)


def test_nothing_is_kept_for_one_pass_or_when_a_frozen_layer_has_dropout(make_config, conversations, tiny_model_dir):
    one_pass = tunery.train(make_config("once", lora={"layers": 1}, train={"epochs": 1}),
                            train_conversations=conversations, quiet=True)
    assert json.loads((one_pass.run_dir / "run.json").read_text())["reused_frozen_layers"] == 0
    from transformers import AutoModelForCausalLM

    from tunery.training.prefix import frozen_prefix
    from tunery.training.trainable_model import attach_lora

    def prefix_for(**overrides):
        model = attach_lora(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), **overrides), LoraConfig(layers=1))
        return frozen_prefix(model, passes=3, total_tokens=100, sharded=False)

    assert prefix_for().start == 1
    assert prefix_for(attention_dropout=0.1) is None  # layer 0 would give a different output each epoch
    assert frozen_prefix(attach_lora(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), LoraConfig(layers="all")),
                         passes=3, total_tokens=100, sharded=False) is None  # nothing below the adapters


def test_resume_with_kept_outputs_equals_a_straight_run(make_config, conversations):
    sections = {"lora": {"layers": 1, "dropout": 0.1}, "train": {"epochs": 3, "save_every_steps": 4}}
    straight = tunery.train(make_config("straight", **sections), train_conversations=conversations, quiet=True)

    def interrupt_at_step_9(event):
        if event["type"] == "train" and event["step"] == 9:
            os.kill(os.getpid(), signal.SIGTERM)

    first = tunery.train(make_config("resumed", **sections), train_conversations=conversations, quiet=True,
                         on_event=interrupt_at_step_9)
    assert first.status == "interrupted"
    resumed = tunery.train(resume=first.run_dir, train_conversations=conversations, quiet=True)
    assert train_losses(resumed.run_dir) == pytest.approx(train_losses(straight.run_dir), abs=1e-6)
    assert_same_weights(adapter_weights(resumed.run_dir), adapter_weights(straight.run_dir), atol=1e-6)


def test_a_top_layer_adapter_loads_in_peft_with_the_same_logits(make_config, conversations, tiny_model_dir):
    result = tunery.train(make_config("top", lora={"layers": 1}), train_conversations=conversations, quiet=True)
    config = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [1]
    assert_peft_loads_like_tunery(tiny_model_dir, result.run_dir, "What is part 3? Part 3 is TX-21.", atol=1e-5)


def test_qlora_keeps_the_outputs_of_its_frozen_4bit_layers(make_config, conversations):
    result = tunery.train(make_config("qlora-top", method="qlora", lora={"layers": 1}, train={"epochs": 3}),
                          train_conversations=conversations, quiet=True)
    assert json.loads((result.run_dir / "run.json").read_text())["reused_frozen_layers"] == 1
    losses = train_losses(result.run_dir)
    assert result.status == "completed" and losses[-1] < losses[0]
    assert all(".layers.1." in name for name in adapter_weights(result.run_dir))


def test_frozen_outputs_of_a_packed_group_equal_each_example_alone(tiny_model_dir, monkeypatch):
    """The groups are packed rows: each example attends to itself only, so its kept output is the one it
    has alone; and the partition follows the example indices, whatever order the steps ask in."""
    from transformers import AutoModelForCausalLM

    from tunery.training.prefix import frozen_prefix
    from tunery.training.trainable_model import attach_lora

    model = attach_lora(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), LoraConfig(layers=1))
    generator = torch.Generator().manual_seed(3)
    examples = [TokenizedExample(input_ids=torch.randint(3, 200, (n,), generator=generator).tolist(), labels=[IGNORE_INDEX] * n)
                for n in (9, 30, 5, 17, 40, 12, 7)]
    monkeypatch.setattr(prefix_module, "GROUP_TOKENS", 50)
    grouped = frozen_prefix(model, passes=3, total_tokens=200, sharded=False)
    assert grouped is not None
    assert [grouped._group(examples, i) for i in (0, 2, 3, 4, 6)] == [[0, 1, 2], [0, 1, 2], [3], [4], [5, 6]]
    for index in (4, 0, 6, 2):  # asked out of order, as a shuffled epoch does
        grouped.inputs_embeds(model, examples, [index], prefix_module.pack_examples([examples[index]]))
    assert sorted(grouped.states) == [0, 1, 2, 4, 5, 6]  # the groups asked for, whole; example 3 not yet
    grouped.inputs_embeds(model, examples, [3], prefix_module.pack_examples([examples[3]]))
    alone = frozen_prefix(model, passes=3, total_tokens=200, sharded=False, packing=False)  # every example alone
    for index in range(len(examples)):
        alone.inputs_embeds(model, examples, [index], prefix_module.pack_examples([examples[index]]))
        assert alone._group(examples, index) == [index]
        torch.testing.assert_close(grouped.states[index], alone.states[index], rtol=1e-5, atol=1e-5)
