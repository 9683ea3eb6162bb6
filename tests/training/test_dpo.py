"""DPO: OpenAI's preference format with located errors, TRL's loss on the same batch, and learning."""

from __future__ import annotations

import json
import math

import pytest
import torch

import tunery
from tunery.config import LoraConfig, TrainConfig
from tunery.data import read_dataset
from tunery.errors import ConfigError
from tunery.types import Conversation, TokenizedExample, Turn


def preference_row(i: int, **override) -> dict:
    row = {"input": {"messages": [{"role": "user", "content": f"What is part {i}?"}]},
           "preferred_output": [{"role": "assistant", "content": f"Part {i} is TX-{i * 7}."}],
           "non_preferred_output": [{"role": "assistant", "content": f"Part {i} is QZ-{i * 7}."}]}
    return {**row, **override}


def preference_pairs(n: int, offset: int = 0) -> list[Conversation]:
    """Pairs that differ only in the part prefix: TX- is preferred, QZ- is not (held-out numbers generalise)."""
    pairs = []
    for i in range(offset, offset + n):
        prompt = (Turn("user", f"What is part {i}?"),)
        pairs.append(Conversation(prompt + (Turn("assistant", f"Part {i} is TX-{i * 7}.", True),), "preference",
                                  rejected=prompt + (Turn("assistant", f"Part {i} is QZ-{i * 7}.", True),)))
    return pairs


@pytest.mark.parametrize(("override", "code", "field"), [
    ({"input": {"messages": "hi"}}, "no_messages", "input.messages"),
    ({"input": {"mesages": []}}, "wrong_type", "input"),
    ({"preferred_output": {"role": "assistant", "content": "x"}}, "wrong_type", "preferred_output"),
    ({"non_preferred_output": [{"role": "user", "content": "x"}]}, "unknown_role", "non_preferred_output[0].role"),
    ({"non_preferred_output": [{"role": "assistant", "content": None}]}, "null_content",
     "non_preferred_output[0].content"),
    ({"non_preferred_output": [{"role": "assistant", "content": "Part 3 is TX-21."}]}, "same_outputs",
     "non_preferred_output"),
    ({"input": {"messages": [{"role": "assistant", "content": "hi"}]}}, "prompt_ends_with_assistant",
     "input.messages[0].role"),
])
def test_preference_errors_are_located(tmp_path, override, code, field):
    lines = [json.dumps(preference_row(i)) for i in range(10)]
    lines[3] = json.dumps(preference_row(3, **override))
    path = tmp_path / "prefs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    report = read_dataset(path)
    errors = [p for p in report.errors if p.code != "too_few_examples"]
    assert [(p.code, p.line, p.field) for p in errors] == [(code, 4, field)], [str(p) for p in report.problems]


def test_preference_file_reads_as_pairs(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(preference_row(i)) + "\n" for i in range(10)))
    report = read_dataset(path)
    assert not report.problems and report.formats == ["preference"]
    chosen, rejected = report.conversations[2].preference_sides()
    assert chosen.messages()[-1]["content"] == "Part 2 is TX-14." and rejected.messages()[-1]["content"] == "Part 2 is QZ-14."
    assert chosen.messages()[:-1] == rejected.messages()[:-1] == [{"role": "user", "content": "What is part 2?"}]


def test_method_dpo_means_lora_preference_tuning():
    config = TrainConfig.model_validate({"method": "dpo"})
    assert (config.method, config.objective, config.dpo.beta) == ("lora", "dpo", "auto")


def test_objective_and_data_must_match(make_config, conversations):
    with pytest.raises(ConfigError, match="needs preference pairs") as info:
        tunery.train(make_config("sft-data", objective="dpo"), train_conversations=conversations, quiet=True)
    assert info.value.code == "wrong_data_for_objective"
    with pytest.raises(ConfigError, match="objective: dpo"):
        tunery.train(make_config("pref-data"), train_conversations=preference_pairs(12), quiet=True)


def _trl_batch_as_pairs(batch) -> list[TokenizedExample]:
    """TRL's padded [chosen..., rejected...] rows as tunery preference examples (same tokens, same masks)."""
    rows = []
    for ids, completion, attention in zip(batch["input_ids"], batch["completion_mask"], batch["attention_mask"],
                                          strict=True):
        keep = attention.bool()
        ids, completion = ids[keep].tolist(), completion[keep].tolist()
        rows.append(TokenizedExample(ids, [t if m else -100 for t, m in zip(ids, completion, strict=True)]))
    half = len(rows) // 2
    for chosen, rejected in zip(rows[:half], rows[half:], strict=True):
        chosen.meta.update(rejected_input_ids=rejected.input_ids, rejected_labels=rejected.labels)
    return rows[:half]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_loss_equals_trl(tiny_model_dir, tmp_path, method):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from tunery.models import load_model
    from tunery.training.dpo import DpoSetup, pair_sums
    from tunery.training.trainable_model import attach_lora

    policy, tokenizer = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
    reference = None
    torch.manual_seed(0)
    if method == "lora":
        policy = attach_lora(policy, LoraConfig(rank=4))
        weights = [p for n, p in policy.named_parameters() if "lora_B" in n]
    else:
        reference, _ = load_model(str(tiny_model_dir), dtype="fp32", device="cpu")
        weights = [p for n, p in policy.named_parameters() if n.endswith("proj.weight")]
    with torch.no_grad():  # move the policy away from its reference so the loss is not log 2
        for p in weights:
            p.add_(torch.randn_like(p) * 0.3)
    rows = [{"prompt": [{"role": "user", "content": f"What is part {i}?"}],
             "chosen": [{"role": "assistant", "content": f"Part {i} is TX-{i * 7}."}],
             "rejected": [{"role": "assistant", "content": f"No idea about {i}" + " really" * (i % 3)}]}
            for i in range(8)]
    args = DPOConfig(output_dir=str(tmp_path / "trl"), beta=0.1, per_device_train_batch_size=4, report_to="none",
                     use_cpu=True, save_strategy="no")
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    if "ref" in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter("ref")  # TRL's reference for a new adapter: the adapter switched off
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.train()
    trl_loss = float(trainer.compute_loss(trainer.model, batch).detach())
    pairs = _trl_batch_as_pairs(batch)
    for packing in (True, False):
        sums = pair_sums(trainer.model, DpoSetup(beta=0.1, reference=reference), pairs, packing=packing,
                         pad_token_id=tokenizer.pad_token_id)
        assert float(sums.loss_sum) / sums.pairs == pytest.approx(trl_loss, abs=1e-4)
    assert abs(trl_loss - math.log(2)) > 1e-3  # the reference really differs from the policy


def test_dpo_held_out_reward_accuracy_rises(make_config):
    config = make_config("dpo-lora", objective="dpo", train={"epochs": 2, "eval_every_steps": 6})
    result = tunery.train(config, train_conversations=preference_pairs(24),
                          val_conversations=preference_pairs(12, offset=500), quiet=True)
    m = result.metrics
    assert m["initial_val_reward_accuracy"] == 0.5  # policy equals its reference: every pair a tie
    assert m["val_reward_accuracy"] >= 0.9 and m["val_reward_margin"] > 0
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["type"] == "train"]
    assert {"reward_accuracy", "reward_margin", "chosen_logps", "rejected_logps"} <= set(train[-1])
    assert train[0]["loss"] == pytest.approx(0.693147, abs=1e-5) and train[-1]["loss"] < 0.5
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["objective"] == "dpo" and run["dpo_beta"] == 0.1
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_full_dpo_keeps_a_frozen_reference(make_config):
    config = make_config("dpo-full", method="full", objective="dpo",
                         train={"epochs": 1, "learning_rate": 1e-3}, dpo={"beta": 0.5})
    result = tunery.train(config, train_conversations=preference_pairs(16),
                          val_conversations=preference_pairs(8, offset=500), quiet=True)
    assert result.metrics["initial_val_reward_accuracy"] == 0.5
    assert result.metrics["val_reward_accuracy"] >= 0.9
    assert (result.run_dir / "model" / "model.safetensors").is_file()
