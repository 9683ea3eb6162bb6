"""Schedules, `auto` hyperparameters and the resource preflight, as numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tunery.config import TrainSettings
from tunery.errors import ResourceError
from tunery.training import resources
from tunery.training.auto import resolve_auto, total_steps
from tunery.training.optim import lr_multiplier
from tunery.training.run_data import epoch_order, step_micro_batches
from tunery.types import Conversation, Turn


def test_warmup_then_cosine_linear_constant():
    kw = {"total_steps": 110, "warmup_steps": 10}
    assert [lr_multiplier(s, schedule="cosine", **kw) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_multiplier(60, schedule="cosine", **kw) == pytest.approx(0.5)
    assert lr_multiplier(60, schedule="linear", **kw) == pytest.approx(0.5)
    assert lr_multiplier(110, schedule="cosine", **kw) == pytest.approx(0.0)
    assert lr_multiplier(60, schedule="constant", **kw) == 1.0
    assert lr_multiplier(0, schedule="constant", total_steps=5, warmup_steps=0) == 1.0


def test_auto_values_depend_on_dataset_size_method_and_model_size():
    settings = TrainSettings()
    small, choices = resolve_auto(settings, num_examples=120, method="lora", num_params=135_000_000)
    large, _ = resolve_auto(settings, num_examples=20_000, method="lora", num_params=135_000_000)
    assert small.epochs > large.epochs >= 2 and small.batch_size < large.batch_size <= 16
    assert {c.key for c in choices} == {"train.epochs", "train.batch_size", "train.learning_rate", "train.warmup_steps"}
    full, _ = resolve_auto(settings, num_examples=120, method="full", num_params=135_000_000)
    big_model, _ = resolve_auto(settings, num_examples=120, method="lora", num_params=7_000_000_000)
    assert full.learning_rate < small.learning_rate and big_model.learning_rate < small.learning_rate
    fixed, choices = resolve_auto(TrainSettings(epochs=3, batch_size=4, learning_rate=1e-4, warmup_steps=0),
                                  num_examples=120, method="lora", num_params=135_000_000)
    assert (fixed.epochs, fixed.batch_size, fixed.learning_rate, choices) == (3, 4, 1e-4, [])



def test_auto_tells_short_facts_from_format_teaching():
    """Facts (short answers) get small batches, more passes and 0.35x the learning rate; helpdesk-like data does not."""
    settings = TrainSettings()
    facts, choices = resolve_auto(settings, num_examples=300, method="lora", num_params=135_000_000,
                                  mean_trained_tokens=16.8)
    helpdesk, _ = resolve_auto(settings, num_examples=432, method="lora", num_params=135_000_000,
                               mean_trained_tokens=36.7)
    unknown, _ = resolve_auto(settings, num_examples=300, method="lora", num_params=135_000_000)
    huge, _ = resolve_auto(settings, num_examples=50_000, method="lora", num_params=135_000_000,
                           mean_trained_tokens=16.8)
    assert (facts.batch_size, facts.epochs, facts.learning_rate) == (2, 15, 7e-4)
    assert "fact-like" in next(c.reason for c in choices if c.key == "train.batch_size")
    assert (helpdesk.batch_size, helpdesk.learning_rate) == (8, 2e-3)
    assert (unknown.batch_size, unknown.learning_rate) == (4, 2e-3)
    assert huge.batch_size == 16


def test_mean_trained_tokens_counts_labels_not_prompt():
    from tunery.training.auto import mean_trained_tokens
    from tunery.types import Location, TokenizedExample

    where = Location("x.jsonl", 1)
    examples = [TokenizedExample([1, 2, 3, 4], [-100, -100, 3, 4], where, {}),
                TokenizedExample([1, 2, 3, 4], [-100, 2, 3, 4], where, {})]
    assert mean_trained_tokens(examples) == 2.5
    assert mean_trained_tokens([]) is None

def test_epoch_order_is_seeded_and_micro_batches_split_across_processes():
    assert epoch_order(10, 1, 0) == epoch_order(10, 1, 0) != epoch_order(10, 1, 1)
    assert sorted(epoch_order(10, 1, 0)) == list(range(10))
    step = list(range(8))
    one = step_micro_batches(step, batch_size=4, grad_accum=2, rank=0, world_size=1)
    ranks = [step_micro_batches(step, batch_size=2, grad_accum=2, rank=r, world_size=2) for r in (0, 1)]
    assert one == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [sorted(a + b) for a, b in zip(*ranks, strict=True)] == one
    assert step_micro_batches([0, 1, 2], batch_size=4, grad_accum=2, rank=0, world_size=1) == [[0, 1, 2]]


def test_memory_preflight_refuses_with_the_numbers():
    config = {"hidden_size": 4096, "num_hidden_layers": 32}
    estimate = resources.estimate_memory(7_000_000_000, config, method="full", weight_bytes=4, lora_rank=16,
                                         tokens_per_micro_batch=4096, gradient_checkpointing=False)
    assert estimate.total_bytes > 100 * resources.GIB
    with pytest.raises(ResourceError) as info:
        resources.check_memory(estimate, available=24 * resources.GIB)
    assert info.value.code == "insufficient_memory"
    assert "24.0 GiB is available" in info.value.message and "qlora" in info.value.hint
    lora = resources.estimate_memory(135_000_000, {"hidden_size": 576, "num_hidden_layers": 30}, method="lora",
                                     weight_bytes=4, lora_rank=16, tokens_per_micro_batch=4096,
                                     gradient_checkpointing=False)
    resources.check_memory(lora, available=24 * resources.GIB)
    qlora = resources.estimate_memory(7_000_000_000, config, method="qlora", weight_bytes=2, lora_rank=16,
                                      tokens_per_micro_batch=1024, gradient_checkpointing=True)
    assert qlora.weights_bytes < estimate.weights_bytes / 7


def test_disk_preflight_refuses_with_the_numbers(tmp_path):
    resources.check_disk(tmp_path / "new" / "run", 1024)
    with pytest.raises(ResourceError) as info:
        resources.check_disk(tmp_path, 10**18)
    assert info.value.code == "insufficient_disk" and "GiB free" in info.value.message


def test_parameter_count_from_safetensors_headers(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    count, config = resources.count_model_parameters(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    assert count == sum(p.numel() for p in model.parameters()) and config["hidden_size"] == 64
    assert math.isfinite(count)


def test_fused_adamw_matches_the_foreach_reference():
    """The fused kernel build_optimizer picks takes the same steps as `foreach` AdamW (1e-6)."""
    import torch

    from tunery.training.optim import build_optimizer, can_fuse

    torch.manual_seed(0)
    shapes = [(16, 24), (24, 16), (24,)]
    start = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(5)]
    names = ["layer.lora_A.weight", "layer.lora_B.weight", "layer.bias"]
    fused_params = [(n, torch.nn.Parameter(t.clone())) for n, t in zip(names, start, strict=True)]
    assert can_fuse([p for _, p in fused_params])
    fused = build_optimizer(fused_params, learning_rate=1e-2, weight_decay=0.1)
    assert fused.defaults["fused"]
    reference_params = [(n, torch.nn.Parameter(p.detach().clone())) for n, p in fused_params]
    decay = [p for n, p in reference_params if p.ndim >= 2]
    reference = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": [reference_params[2][1]], "weight_decay": 0.0}], lr=1e-2, foreach=True)
    for step_grads in grads:
        for (_, a), (_, b), g in zip(fused_params, reference_params, step_grads, strict=True):
            a.grad, b.grad = g.clone(), g.clone()
        fused.step()
        reference.step()
    for (_, a), (_, b) in zip(fused_params, reference_params, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=0)


def test_default_threads_leave_out_the_cores_other_processes_keep_busy_now(monkeypatch):
    import torch

    from tunery import host
    from tunery.training.precision import set_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(host, "physical_cores", lambda: 4)
    monkeypatch.setattr(host.os, "getloadavg", lambda: (9.0, 9.0, 9.0))  # a finished job still weighs here
    try:
        counts = iter([1, 1, 3, 1, 1])  # this process alone, but for one spike
        monkeypatch.setattr(host, "runnable_tasks", lambda: next(counts))
        assert set_threads(None) == 4
        monkeypatch.setattr(host, "runnable_tasks", lambda: 3)  # two other tasks running
        assert set_threads(None) == 2
        assert set_threads(None, processes=2) == 1  # our sibling counts as ours, then the cores are split
        monkeypatch.setattr(host, "runnable_tasks", lambda: None)  # no /proc/stat: the load average decides
        assert set_threads(None) == 1
        assert set_threads(3) == 3
    finally:
        torch.set_num_threads(before)


def test_cpu_runs_bound_onednn_kernel_cache_unless_the_user_sized_it(monkeypatch):
    import os

    from tunery.training.precision import ONEDNN_CACHE_CAPACITY, limit_kernel_cache

    for name in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY"):
        monkeypatch.delenv(name, raising=False)
    assert limit_kernel_cache() is True
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(ONEDNN_CACHE_CAPACITY)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "4096")  # the user's size stays
    assert limit_kernel_cache() is False
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "4096"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    monkeypatch.setenv("DNNL_PRIMITIVE_CACHE_CAPACITY", "0")  # oneDNN's older name counts too
    assert limit_kernel_cache() is False
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ


def test_preview_auto_names_the_choices_a_run_would_make(tmp_path, tiny_model_dir):
    """What the console shows before a job starts: the same choices `train` makes, with reasons."""
    import json

    from tunery.models import load_tokenizer
    from tunery.training.auto import preview_auto

    def write(name: str, answer: str) -> Path:
        rows = [{"messages": [{"role": "user", "content": f"q {i}"}, {"role": "assistant", "content": answer}]}
                for i in range(20)]
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    tokenizer = load_tokenizer(str(tiny_model_dir))
    facts = {c.key: c for c in preview_auto(write("facts.jsonl", "Paris"), tokenizer, tiny_model_dir, method="lora")}
    assert facts["train.batch_size"].value == 2 and "fact-like" in facts["train.batch_size"].reason
    assert facts["train.epochs"].value == 15 and facts["lora.layers"].value == "all"  # 2 layers: too few to split
    long_answer = " ".join(["the printer queue on floor three is offline again"] * 8)
    formats = {c.key: c for c in preview_auto(write("long.jsonl", long_answer), tokenizer, tiny_model_dir, method="full")}
    assert "fact-like" not in formats["train.batch_size"].reason and "lora.layers" not in formats


def test_rewordings_spread_the_passes_per_fact_instead_of_adding_steps():
    """300 facts in 5 wordings each: still fact-like, 15 passes per fact = 3 epochs, the same steps."""
    settings = TrainSettings()
    plain, _ = resolve_auto(settings, num_examples=300, method="lora", num_params=135_000_000,
                            mean_trained_tokens=16.8)
    augmented, choices = resolve_auto(settings, num_examples=1500, method="lora", num_params=135_000_000,
                                      mean_trained_tokens=16.8, augmented_examples=1200)
    assert (augmented.batch_size, augmented.epochs, augmented.learning_rate) == (2, 3, plain.learning_rate)
    assert total_steps(augmented, 1500) == total_steps(plain, 300) == 2250
    assert "15 passes per fact over 5.0 wordings" in next(c.reason for c in choices if c.key == "train.epochs")
    # 6 wordings (the question as written twice): 2.5 epochs rounds up, never fewer passes than one wording gets
    six, choices = resolve_auto(settings, num_examples=1800, method="lora", num_params=135_000_000,
                                mean_trained_tokens=16.8, augmented_examples=1500)
    assert six.epochs == 3 and total_steps(six, 1800) == 2700
    assert "18 passes per fact over 6.0 wordings" in next(c.reason for c in choices if c.key == "train.epochs")
    # 1800 facts stay fact-like with 7200 rewordings beside them (facts are counted without them)
    many, _ = resolve_auto(settings, num_examples=9000, method="lora", num_params=135_000_000,
                           mean_trained_tokens=16.8, augmented_examples=7200)
    assert many.batch_size == 2


def test_prepare_data_adds_rewordings_to_fact_like_training_data_only(tiny_model_dir):
    from tunery.config import DataConfig
    from tunery.models import load_tokenizer
    from tunery.training.run_data import prepare_data

    tokenizer = load_tokenizer(str(tiny_model_dir))
    facts = [Conversation((Turn("user", f"Who owns the asset tracker in office {i}?"),
                           Turn("assistant", f"Person {i}.", True))) for i in range(20)]
    data = prepare_data(DataConfig(val_fraction=0.25), tokenizer, seed=1, train_conversations=facts, augment=True)
    # 15 questions x 4 rewordings, and each once more as written
    assert (data.augmented, len(data.train), len(data.validation)) == (75, 90, 5)
    assert data.info["augmented_examples"] == 75 and data.info["train_examples"] == 90
    plain = prepare_data(DataConfig(val_fraction=0.25), tokenizer, seed=1, train_conversations=facts)
    assert (plain.augmented, len(plain.train)) == (0, 15)
    long_answers = [Conversation((c.turns[0], Turn("assistant", " ".join(["the queue is offline again"] * 10), True)))
                    for c in facts]
    assert prepare_data(DataConfig(val_fraction=0), tokenizer, seed=1, train_conversations=long_answers,
                        augment=True).augmented == 0


def test_prepare_data_adds_the_paraphrases_that_keep_the_question(tiny_model_dir):
    """`data.augment: model`: every question goes to the paraphraser once; replies that drop a name are not kept."""
    from tunery.config import DataConfig
    from tunery.models import load_tokenizer
    from tunery.training.run_data import prepare_data

    tokenizer = load_tokenizer(str(tiny_model_dir))
    facts = [Conversation((Turn("user", f"Who owns the asset tracker in office {i}?"),
                           Turn("assistant", f"Person {i}.", True))) for i in range(4)]
    asked: list[str] = []

    def paraphrase(questions):
        asked.extend(questions)
        return {q: q.replace("Who owns", "Who is the owner of") if i < 2 else "Who owns the asset tracker?"
                for i, q in enumerate(questions)}

    data = prepare_data(DataConfig(val_fraction=0), tokenizer, seed=1, train_conversations=facts, augment=True,
                        paraphrase=paraphrase)
    assert asked == [c.turns[0].content for c in facts]
    assert data.augmented == 4 * 5 + 2 and (data.info["model_paraphrases"], data.info["model_paraphrases_asked"]) == (2, 4)
    texts = [tokenizer.decode(e.input_ids) for e in data.train]
    kept = [t for t in texts if "Who is the owner of the asset tracker in office 1?" in t]
    assert len(kept) == 1 and "Person 1." in kept[0] and not any("Who owns the asset tracker?" in t for t in texts)
    asked.clear()
    prepare_data(DataConfig(val_fraction=0), tokenizer, seed=1, train_conversations=facts, paraphrase=paraphrase)
    assert asked == []  # no augmentation, no paraphrases


def test_augment_model_runs_the_base_model_on_every_question(make_config):
    """The real path on the tiny model: its replies are asked for, counted, and (being noise) not kept."""
    import json

    import tunery

    facts = [Conversation((Turn("user", f"Who owns the asset tracker in office {i}?"),
                           Turn("assistant", f"Person {i}.", True))) for i in range(8)]
    result = tunery.train(make_config("para", data={"augment": "model"}, train={"epochs": "auto"}),
                          train_conversations=facts, quiet=True)
    data = json.loads((result.run_dir / "run.json").read_text())["data"]
    assert data["model_paraphrases_asked"] == 8
    assert data["augmented_examples"] == 8 * 5 + data["model_paraphrases"]


def test_augment_auto_applies_with_auto_passes_only():
    from tunery.config import TrainConfig
    from tunery.training.run import augments

    def config(**train):
        return TrainConfig.model_validate({"data": {"train": "x.jsonl"}, "train": train})

    assert augments(config())
    assert not augments(config(epochs=3)) and not augments(config(max_steps=50))
    assert not augments(TrainConfig.model_validate({"data": {"train": "x.jsonl", "augment": "none"}}))
    assert augments(TrainConfig.model_validate({"data": {"train": "x.jsonl", "augment": "model"}}))


def test_auto_precision_decides_on_two_measured_rates_and_records_them(monkeypatch):
    from tunery import host
    from tunery.models.load import BF16_MIN_SPEEDUP
    from tunery.training.precision import choose_precision

    monkeypatch.setattr(host, "cpu_has_fast_bf16", lambda: True)
    chosen = choose_precision("auto", "lora", "cpu", (64, 128))
    rates = chosen.measured_flops_per_s
    assert rates["fp32"] > 0 and rates["bf16"] > 0 and "measured" in chosen.reason
    assert chosen.name == ("bf16" if rates["bf16"] / rates["fp32"] >= BF16_MIN_SPEEDUP else "fp32")
    assert set(chosen.to_dict()["measured_gflops_per_s"]) == {"fp32", "bf16"}
    assert "measured_gflops_per_s" not in choose_precision("fp32", "lora", "cpu").to_dict()


def test_planned_length_says_what_will_run_after_caps():
    from tunery.training.run import planned_length

    capped = TrainSettings(epochs=8, max_steps=3, batch_size=4, grad_accum=1)
    assert planned_length(capped, total_steps(capped, 384), 384) == \
        "3 steps = 0.03 epochs of 384 examples (batch 4 x accum 1); max_steps 3 caps epochs 8"
    full = TrainSettings(epochs=2, batch_size=4, grad_accum=2)
    assert planned_length(full, total_steps(full, 24, 2), 24, world_size=2) == \
        "4 steps = 2.00 epochs of 24 examples (batch 4 x accum 2 x 2 processes)"


def test_a_resumed_run_computes_in_the_precision_its_first_session_chose(tmp_path):
    """`precision: auto` measures once per run: a resume near the threshold must not come out the other way."""
    import json

    import torch

    from tunery.config import TrainConfig
    from tunery.training.run import run_precision
    from tunery.training.rundir import RunDir

    config = TrainConfig.model_validate({"data": {"train": "x.jsonl"}})  # precision: auto
    run = RunDir(tmp_path)
    for recorded, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        run.run_json_path.write_text(json.dumps({"precision": {"compute": recorded, "reason": "auto: measured"}}))
        chosen = run_precision(run, config, tmp_path, "cpu", {"hidden_size": 64, "intermediate_size": 128})
        assert chosen.compute == dtype and chosen.reason == "resumed with the run's own choice (auto: measured)"
    fixed = TrainConfig.model_validate({"data": {"train": "x.jsonl"}, "train": {"precision": "fp32"}})
    assert run_precision(run, fixed, tmp_path, "cpu", {}).reason == "fp32 requested"  # a setting is the setting
    fresh = run_precision(run, config, None, "cpu", {"hidden_size": 64, "intermediate_size": 128})
    assert not fresh.reason.startswith("resumed")  # a new run measures


def test_a_gpu_run_takes_each_micro_batch_in_one_pass_unless_told_otherwise():
    """Short pieces only multiply kernel launches on a GPU."""
    from tunery.training.run import micro_batch_pieces

    settings = TrainSettings()
    small = {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536}
    on_gpu, choices = micro_batch_pieces(settings, set(), "cuda", small, torch.bfloat16)
    assert on_gpu.micro_batch_tokens == 0 and [c.key for c in choices] == ["train.micro_batch_tokens"]
    told = TrainSettings(micro_batch_tokens=128)
    for device in ("cuda", "cpu"):
        kept, choices = micro_batch_pieces(told, told.model_fields_set, device, small, torch.bfloat16)
        assert kept.micro_batch_tokens == 128 and choices == []


def test_cpu_pieces_are_as_long_as_the_model_s_activations_allow():
    """Fewer, longer pieces on a CPU (fewer operations per step), bounded by the activations' estimate."""
    from tunery.training.run import PIECE_ACTIVATION_BUDGET, activation_bytes_per_token, micro_batch_pieces

    settings = TrainSettings()
    small = {"num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536}  # the default model
    large = {"num_hidden_layers": 24, "hidden_size": 2048, "intermediate_size": 8192}  # a 1.7B model
    for dtype in (torch.bfloat16, torch.float32):
        chosen, choices = micro_batch_pieces(settings, set(), "cpu", small, dtype)
        assert chosen.micro_batch_tokens == 1024 and choices[0].value == 1024
    assert micro_batch_pieces(settings, set(), "cpu", large, torch.bfloat16)[0].micro_batch_tokens == 512
    kept, choices = micro_batch_pieces(settings, set(), "cpu", large, torch.float32)
    assert kept.micro_batch_tokens == 256 and choices == []  # the field's own default: nothing to record
    for tokens, config in ((512, large), (1024, small)):
        assert tokens * activation_bytes_per_token(config, torch.bfloat16) <= PIECE_ACTIVATION_BUDGET
    unknown, choices = micro_batch_pieces(settings, set(), "cpu", {}, torch.float32)
    assert unknown.micro_batch_tokens == 256 and choices == []
    whole = TrainSettings(micro_batch_tokens=0)
    assert micro_batch_pieces(whole, whole.model_fields_set, "cpu", small, torch.float32)[0].micro_batch_tokens == 0
