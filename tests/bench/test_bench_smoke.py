"""The benchmark harness's own pieces on the tiny model: FLOPs and MFU arithmetic, the data subset,
token counting on both sides, the shared validation loss, and the report's ratios. No timing asserts.
"""

from __future__ import annotations

import json
import math

import pytest

from bench import report
from bench.flops import ModelShape, mfu, read_model_shape, training_flops
from bench.workload import Workload, prepare_subset
from tunery.errors import DataError


def write_chat(path, n, *, long_every=0):
    with path.open("w") as f:
        for i in range(n):
            answer = "The printer on floor three is offline. " * (40 if long_every and i % long_every == 0 else 1)
            f.write(json.dumps({"messages": [{"role": "user", "content": f"Outlook keeps crashing {i}"},
                                             {"role": "assistant", "content": answer + str(i)}]}) + "\n")
    return path


def test_model_shape_counts_decoder_linears_and_lora_params(tiny_model_dir):
    shape = read_model_shape(tiny_model_dir)
    # per layer: q 64x64, k 64x32, v 64x32, o 64x64, gate/up 64x128, down 128x64; two layers
    assert shape.decoder_linear_params == 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192)
    # LoRA adds r (d_in + d_out) per adapted linear
    assert shape.lora_params(4) == 2 * 4 * (128 + 96 + 96 + 128 + 3 * 192)
    assert (shape.num_layers, shape.attn_width, shape.hidden_size) == (2, 64, 64)


def test_training_flops_formula_and_mfu():
    shape = ModelShape(linear_shapes=[("a", 10, 20)], num_layers=1, attn_width=8, vocab_size=100,
                       hidden_size=10, tied_head=True)
    lora = training_flops(shape, method="lora", rank=2, tokens=5, trained_tokens=3, context_sum=15)
    # 4 N tokens + 6 N_lora tokens + 12 d_attn L context pairs + 4 V d trained tokens
    assert lora == 4 * 200 * 5 + 6 * (2 * 30) * 5 + 12 * 8 * 1 * 15 + 4 * 100 * 10 * 3
    full = training_flops(shape, method="full", rank=2, tokens=5, trained_tokens=3, context_sum=15)
    assert full == 6 * 200 * 5 + 12 * 8 * 15 + 4 * 100 * 10 * 3
    assert mfu(2e12, 2.0, 4e12) == pytest.approx(0.25)
    assert mfu(1.0, 0.0, 1.0) == 0.0


def test_prepare_subset_skips_long_examples_and_counts_tokens(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from tunery.data.dataset import load_dataset
    from tunery.data.template import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    source = write_chat(tmp_path / "src.jsonl", 30, long_every=3)
    stats = prepare_subset(source, tmp_path / "out.jsonl", tokenizer, count=12, max_seq_len=200)
    kept = load_dataset(str(tmp_path / "out.jsonl"), min_examples=1)
    assert stats.examples == len(kept) == 12
    encoded = [encode_conversation(tokenizer, c) for c in kept]
    assert all(len(e.input_ids) <= 200 for e in encoded)
    assert not any(c.turns[-1].content.endswith(("0", "3", "6")) and len(c.turns[-1].content) > 300 for c in kept)
    assert stats.tokens == sum(len(e.input_ids) for e in encoded)
    assert stats.trained_tokens == sum(e.num_trained for e in encoded)
    assert stats.context_sum == sum(len(e.input_ids) * (len(e.input_ids) + 1) // 2 for e in encoded)
    with pytest.raises(DataError, match="only 20 examples fit"):
        prepare_subset(source, tmp_path / "none.jsonl", tokenizer, count=25, max_seq_len=200)


def test_both_sides_train_the_same_tokens_and_share_the_validation_loss(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from bench.evaluate import validation_loss
    from bench.side_trl import run_trl
    from bench.side_tunery import run_tunery

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = prepare_subset(write_chat(tmp_path / "src.jsonl", 16), tmp_path / "train.jsonl", tokenizer,
                           count=12, max_seq_len=128)
    prepare_subset(write_chat(tmp_path / "val_src.jsonl", 4), tmp_path / "val.jsonl", tokenizer, count=4,
                   max_seq_len=128)
    work = Workload(model_path=str(tiny_model_dir), train_file=str(tmp_path / "train.jsonl"),
                    val_file=str(tmp_path / "val.jsonl"), rank=4, alpha=8, learning_rate=1e-3, warmup_steps=1,
                    batch_size=4, steps=3, max_seq_len=128, precision="fp32")
    ours = run_tunery(work, tmp_path / "tunery")
    theirs = run_trl(work, tmp_path / "trl")
    for result in (ours, theirs):
        assert result["steps"] == 3
        assert result["tokens"] == train.tokens  # every example exactly once, no padding counted
        assert result["train_wall_s"] > 0 and result["train_cpu_s"] > 0
    assert ours["trained_tokens"] == train.trained_tokens
    base = validation_loss(str(tiny_model_dir), work.val_file, max_seq_len=128)
    tuned = [validation_loss(str(tiny_model_dir), work.val_file, adapter_dir=r["adapter_dir"], max_seq_len=128)
             for r in (ours, theirs)]
    assert all(t["val_tokens"] == base["val_tokens"] > 0 for t in tuned)
    # A random tiny model sits near ln(vocab); training moves both adapters off the base loss.
    assert math.isfinite(base["val_loss"]) and all(t["val_loss"] != base["val_loss"] for t in tuned)
    # The same evaluation as a bench job: its own process, its own peak RSS, the same number.
    from bench.run import run_job

    job = run_job("eval", {"model_path": str(tiny_model_dir), "val_file": work.val_file,
                           "adapter_dir": ours["adapter_dir"], "max_seq_len": 128}, tmp_path, "eval", 600)
    assert job["val_loss"] == pytest.approx(tuned[0]["val_loss"], abs=1e-6)
    assert job["peak_rss_bytes"] == job["vm_hwm_bytes"] > 50 * 2**20  # torch alone is bigger than this
    assert job["ru_maxrss_bytes"] >= job["vm_hwm_bytes"]


def result(tokens, wall_s, rss_gib, val_loss=None, flops=1e12):
    return {"tokens": tokens, "trained_tokens": tokens // 4, "train_wall_s": wall_s,
            "peak_rss_bytes": rss_gib * report.GiB, "val_loss": val_loss, "model_flops": flops}


def test_report_ratios_spreads_and_targets():
    data = {"peaks": [{"bf16": {"flops_per_s": 1e12}, "fp32": {"flops_per_s": 5e11}},
                      {"bf16": {"flops_per_s": 2e12}, "fp32": {"flops_per_s": 4e11}}],
            "runs": {"tunery-lora": [result(1000, 1.0, 1.0, 1.00), result(1000, 2.0, 1.2), result(1000, 0.5, 1.1)],
                     "trl-lora": [result(1000, 10.0, 2.0, 1.01), result(1000, 8.0, 2.4)],
                     "tunery-qlora": [result(1000, 2.0, 0.9)]}}
    comp = report.comparison(data)
    assert comp["peak_bf16"] == 2e12 and comp["peak_fp32"] == 5e11
    speed = comp["rows"]["tunery-lora"]["tokens_per_s"]
    assert (speed["median"], speed["min"], speed["max"], speed["n"]) == (1000, 500, 2000, 3)
    assert comp["ratios"]["speed_ratio"] == pytest.approx(1000 / 112.5)  # baseline median of 100 and 125
    assert comp["ratios"]["rss_ratio"] == pytest.approx(1.1 / 2.2)
    assert comp["ratios"]["val_loss_delta"] == pytest.approx(-0.01)
    assert comp["ratios"]["mfu_own"] == pytest.approx(2.0)  # 1e12 FLOPs in 1 s against tunery's fp32 peak 5e11
    lines = "\n".join(report.target_lines(comp["ratios"], comp["rows"]))
    assert "| tokens/s vs baseline (TRL's faster precision) | >= 2.5 | 8.89x | met |" in lines
    assert "| peak RSS vs baseline | <= 0.5 | 0.50x | met |" in lines
    assert "QLoRA peak RSS vs LoRA | < 1 | 0.82x | met" in lines


def test_markdown_report_names_machine_command_and_bf16_finding(tmp_path):
    data = {"peaks": [{"bf16": {"flops_per_s": 5e10}, "fp32": {"flops_per_s": 1e11}}],
            "runs": {"tunery-lora": [result(1000, 4.0, 1.0, 1.0)], "trl-lora": [result(1000, 8.0, 2.5, 1.1)],
                     "tunery-lora-extra": [result(1000, 2.0, 1.5, 1.0)]},
            "failures": {"tunery-qlora": "bench job failed"}, "extra_tunery": ["train.precision=fp32"],
            "machine": {"cpu": "Test CPU", "logical_cpus": 2, "torch": "2.x", "torch_threads": 2,
                        "cpu_capability": "AVX512", "python": "3.11", "flags": {"avx512_bf16": True, "amx_bf16": False}},
            "date_utc": "2026-01-01 00:00 UTC", "duration_s": 600, "command": "python -m bench.run --quick",
            "quick": True, "load_avg": {"start": [3.0, 2, 1], "end": [4.0, 2, 1]},
            "workload": {"model_path": "/m/smollm2", "max_seq_len": 512, "rank": 16, "alpha": 32.0,
                         "learning_rate": 1e-3, "lr_schedule": "cosine", "warmup_steps": 2, "steps": 5,
                         "batch_size": 4, "grad_accum": 1, "seed": 42},
            "sources": {"train": "examples/helpdesk/train.jsonl", "validation": "examples/helpdesk/validation.jsonl"},
            "train_stats": {"examples": 20, "tokens": 1000, "trained_tokens": 250},
            "val_stats": {"examples": 16}, "tunery_command": "tunery train empty.yaml method=lora",
            "model_shape": {"decoder_linear_params": 106e6, "lora_params": 4.9e6, "layers": 30,
                            "vocab_size": 49152, "hidden_size": 576}}
    text = report.render_markdown(data)
    assert "python -m bench.run --quick" in text and "Test CPU" in text and "amx_bf16 no" in text
    assert "| tunery LoRA | 1 | 250 | 2.00x |" in text
    # bf16 measured slower than fp32 here: its MFU column stays empty, the fp32 one is filled
    assert "| tunery LoRA | 1 | 250 | 2.00x | - | 1.00 | 0.40x | 1.0000 | - | 250.0% |" in text
    assert "bf16 matmuls run at 0.50x the fp32 rate here" in text
    assert "2.00x the tokens/s of the default row" in text
    assert "| tunery LoRA + `train.precision=fp32` | 1 | 500 | 4.00x |" in text
    assert "**tunery QLoRA failed**" in text
    assert "reduced run" in text
    assert "| MFU of the peak of the precision tunery used | >= 0.4 | 250.0% | met |" in text  # fp32 peak
    assert "**Contended machine** (load average 3.0 on 2 CPUs" in text
    assert "| Test CPU | avx512_bf16 | 2026-01-01 00:00 UTC | 0.50x | 2.00x |" in text  # machine kinds met
    assert "## GPU (`bench/gpu.sh`)" in text
    # Runnable tasks at the start and end, where recorded, judge contention instead of the decaying load average
    data["busy_cores"] = {"start": 0, "end": 0}
    assert "Contended machine" not in report.render_markdown(data)
    data["busy_cores"] = {"start": 0, "end": 1}
    assert "other tasks kept 0 core(s) busy at the start and 1 at the end" in report.render_markdown(data)
    assert "less the bench): 0 / 1" in report.render_markdown(data)
    data["conditions"] = "idle: nothing else ran"
    assert "- Conditions: idle: nothing else ran" in report.render_markdown(data)
    del data["busy_cores"], data["conditions"]
    with_supplement = report.render_markdown(data, [data])
    assert "## Supplementary run (2026-01-01 00:00 UTC)" in with_supplement
    assert with_supplement.count("| tunery LoRA | 1 | 250 | 2.00x |") == 2
    assert "| supplementary 1 (2026-01-01 00:00 UTC) | fp32 | None / None | 2.00x | - | 0.40x | -0.100 |" \
        in with_supplement


def test_baseline_is_trls_faster_precision_and_mfu_uses_the_model_shaped_peak_of_tunerys_precision():
    linear = {"linear_bf16": {"flops_per_s": 4e12}, "linear_fp32": {"flops_per_s": 1e12}}
    data = {"peaks": [{"bf16": {"flops_per_s": 8e12}, "fp32": {"flops_per_s": 2e12}, **linear}],
            "runs": {"tunery-lora": [result(1000, 1.0, 1.0, 1.00)],
                     "trl-lora-bf16": [result(1000, 4.0, 2.0, 1.01)], "trl-lora-fp32": [result(1000, 8.0, 3.0, 1.02)]}}
    data["runs"]["tunery-lora"][0]["settings"] = {"precision": {"compute": "bf16", "reason": "auto: measured"}}
    comp = report.comparison(data)
    assert comp["baseline"] == "trl-lora-bf16" and comp["ratios"]["speed_ratio"] == pytest.approx(4.0)
    assert (comp["peak_bf16"], comp["square_bf16"], comp["model_shaped_peaks"]) == (4e12, 8e12, True)
    assert comp["ratios"]["mfu_own"] == pytest.approx(0.25)  # 1e12 FLOP/s of the 4e12 bf16 F.linear peak
    assert comp["ratios"]["val_loss_gap"] == pytest.approx(0.01)
    data["runs"]["trl-lora-fp32"] = [result(1000, 2.0, 3.0, 1.02)]  # fp32 now the faster TRL: it is the baseline
    assert report.comparison(data)["baseline"] == "trl-lora-fp32"


def test_linear_peak_at_the_model_shapes_counts_every_linear(tiny_model_dir):
    from bench.flops import measure_linear_peak

    shape = read_model_shape(tiny_model_dir)
    peak = measure_linear_peak("fp32", shape.linear_shapes, tokens=16, min_time_s=0.01)
    assert peak.dtype == "fp32" and peak.size == 16 and peak.flops_per_s > 0


def test_random_weight_model_for_gpu_throughput_trains_like_any_folder(tiny_model_dir, tmp_path):
    from bench.gpu_model import write_random_model
    from tunery.models import load_tokenizer

    out = write_random_model(tmp_path / "random", tokenizer_from=str(tiny_model_dir), hidden_size=64,
                             num_hidden_layers=3, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    shape = read_model_shape(out)
    assert (shape.num_layers, shape.hidden_size) == (3, 64)
    assert load_tokenizer(str(out)).chat_template == load_tokenizer(str(tiny_model_dir)).chat_template


def test_default_schedule_gives_both_sides_the_same_learning_rate_at_every_step():
    import torch
    from transformers import get_cosine_schedule_with_warmup

    from tunery.training.optim import lr_multiplier

    work = Workload(model_path="m", train_file="t", val_file="v")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, work.warmup_steps, work.steps)
    for step in range(work.steps):
        ours = lr_multiplier(step, total_steps=work.steps, warmup_steps=work.warmup_steps, schedule=work.lr_schedule)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(ours, abs=1e-12), step
        optimizer.step()
        scheduler.step()


def test_quick_changes_defaults_but_explicit_options_win():
    from bench.run import parse_args

    quick = parse_args(["--quick"])
    assert (quick.steps, quick.batch_size, quick.repetitions) == (5, 4, 2)
    assert parse_args(["--quick", "--repetitions", "1", "--steps", "7"]).repetitions == 1
    assert parse_args(["--quick", "--steps", "7"]).steps == 7
    full = parse_args([])
    assert (full.steps, full.batch_size, full.baseline_precision, full.precision) == (100, 4, "both", "auto")


def test_report_names_no_machine_paths():
    run = {"workload": {"model_path": "/srv/models/smollm2-135m-instruct", "train_file": "/scratch/b1/data/train.jsonl"}}
    text = "base_model=/srv/models/smollm2-135m-instruct data.train=/scratch/b1/data/train.jsonl --work-dir /scratch/b1"
    assert report.scrub_paths(text, [run]) == ("base_model=smollm2-135m-instruct data.train=WORK_DIR/data/train.jsonl "
                                               "--work-dir WORK_DIR")


def test_fact_recall_section_judges_both_bounds():
    facts = {"facts": 300, "command": "python examples/facts/measure.py", "date_utc": "today", "conditions": "idle",
             "auto": {"train.epochs": 15}, "steps": 4500, "train_s": 590.0, "tokens_per_s": 450.0,
             "recall_trained": {"exact": 0.85, "key": 0.9}, "recall_reworded": {"exact": 0.0, "key": 0.4}}
    text = "\n".join(report.facts_lines(facts))
    assert "| recall (key), trained questions | >= 95% | 90.0% | **not met** |" in text
    assert "| recall (key), reworded questions | >= 60% | 40.0% | **not met** |" in text
    assert "| training time | <= 600 s | 590 s | met |" in text


def test_lever_section_shows_each_lever_kept_or_not_and_both_peaks():
    levers = {"machine": {"cpu": "AMD EPYC", "flags": ["avx512_bf16"]}, "date_utc": "today",
              "conditions": "contended", "peak_threads": 1, "peak_gflops_per_s": {"bf16": 200.0, "fp32": 50.0},
              "workload": "helpdesk", "mfu": {"before": 0.2, "after": 0.3, "note": "same process"},
              "levers": [{"lever": "fast", "ratio": 1.3, "kept": True, "notes": "a"},
                         {"lever": "slow", "ratio": 0.7, "kept": False, "notes": "b"}], "profile": ["mm 50%"]}
    text = "\n".join(report.lever_lines(levers))
    assert "## Speed levers: AMD EPYC (avx512_bf16)" in text
    assert "bf16 200 GFLOP/s, fp32 50 GFLOP/s (bf16 4.0x fp32)" in text
    assert "| fast | 1.30x | yes | a |" in text and "| slow | 0.70x | no | b |" in text
    assert "20.0% before, 30.0% after" in text


def test_peaks_are_measured_at_the_threads_the_runs_use(tmp_path, monkeypatch):
    import torch

    import bench.flops
    from bench import worker
    from bench.flops import MatmulPeak

    seen = []
    monkeypatch.setattr(bench.flops, "measure_matmul_peak",
                        lambda name: seen.append(torch.get_num_threads()) or MatmulPeak(name, 1024, 1e9))
    monkeypatch.setattr(bench.flops, "measure_linear_peak",
                        lambda name, shapes, tokens: seen.append(torch.get_num_threads()) or MatmulPeak(name, tokens, 1e9))
    before = torch.get_num_threads()
    spec, out = tmp_path / "spec.json", tmp_path / "out.json"
    spec.write_text(json.dumps({"dtypes": ["bf16"], "linear_shapes": [["q", 8, 8]], "threads": 1}))
    try:
        assert worker.main(["peak", str(spec), str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1] and json.loads(out.read_text())["threads"] == 1
    data = {"peaks": [{"bf16": {"flops_per_s": 1e12}, "fp32": {"flops_per_s": 5e11}, "threads": 1}], "runs": {}}
    assert "best of the run, 1 thread)" in report.peak_lines(report.comparison(data))[0]


def test_trl_bf16_is_left_out_only_where_bf16_is_measured_slow():
    """On a CPU that emulates bf16, TRL's bf16 autocast cannot be its faster precision: not run (it took hours)."""
    from bench.run import slow_bf16_baseline

    def peak(bf16, fp32):
        return {"linear_bf16": {"flops_per_s": bf16}, "linear_fp32": {"flops_per_s": fp32}}

    skipped = slow_bf16_baseline("both", peak(18.7e9, 139.5e9))
    assert list(skipped) == ["trl-lora-bf16"] and "0.13x fp32" in skipped["trl-lora-bf16"]
    assert slow_bf16_baseline("both", peak(100e9, 120e9)) == {}  # near fp32: it might still win, so it runs
    assert slow_bf16_baseline("both", peak(400e9, 190e9)) == {}
    assert slow_bf16_baseline("bf16", peak(18.7e9, 139.5e9)) == {}  # asked for by name: runs anyway
    assert slow_bf16_baseline("both", {}) == {}  # peaks from before the model-shaped measurement
    data = {"peaks": [{"bf16": {"flops_per_s": 1e9}, "fp32": {"flops_per_s": 1e11}}],
            "runs": {"tunery-lora": [result(1000, 4.0, 1.0, 1.0)], "trl-lora-fp32": [result(1000, 8.0, 2.5, 1.1)]},
            "machine": {"flags": {}}, "workload": {}, "baseline_skipped": skipped}
    lines = report.observations(data, report.comparison(data))
    assert any(line.startswith("- TRL SFTTrainer + PEFT LoRA, bf16 autocast not run: bf16 `F.linear`")
               for line in lines)
    assert report.comparison(data)["baseline"] == "trl-lora-fp32"


def test_profile_job_splits_a_tunery_step_into_its_parts(tiny_model_dir, tmp_path):
    """The bench's `profile` job: a real tunery run of the tiny model under torch's profiler."""
    from transformers import AutoTokenizer

    from bench.run import run_job
    from bench.side_tunery import PARTS

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    train = prepare_subset(write_chat(tmp_path / "src.jsonl", 24), tmp_path / "train.jsonl", tokenizer,
                           count=20, max_seq_len=128)
    work = Workload(model_path=str(tiny_model_dir), train_file=str(tmp_path / "train.jsonl"),
                    val_file=str(tmp_path / "train.jsonl"), rank=4, alpha=8, learning_rate=1e-3, warmup_steps=0,
                    batch_size=4, steps=100, max_seq_len=128, precision="fp32")
    prof = run_job("profile", {"workload": work.__dict__, "output_dir": str(tmp_path / "run"), "skip": 1, "steps": 3},
                   tmp_path, "profile", 600)
    assert prof["steps"] == 3 and prof["skip"] == 1
    assert 0 < prof["tokens"] < train.tokens  # steps 2-4 of 5, not the whole subset
    assert list(prof["parts_s"]) == list(PARTS)
    assert prof["parts_s"]["GEMMs"] > 0 and prof["parts_s"]["optimizer"] > 0
    assert 0 < sum(prof["parts_s"].values()) < prof["wall_s"]
    assert any(name in prof["top_ops_s"] for name in ("aten::mm", "aten::addmm"))
    data = {"profile": prof, "runs": {"tunery-lora": [result(1000, 4.0, 1.0, 1.0)]}}
    comp = {"rows": {"tunery-lora": {"settings": {}}}, "peak_fp32": 1e12, "peak_bf16": 1e12}
    text = "\n".join(report.profile_lines(data, comp))
    assert "### Where tunery's step time goes" in text and "steps 2-4" in text
    assert "| GEMMs |" in text and "| outside torch's operations" in text and "GFLOP/s" in text
    assert report.profile_lines({"runs": {}}, comp) == []  # results saved before profiles existed


def test_a_missed_speed_target_states_the_ceiling_the_baseline_leaves():
    """TRL at 34.6% of the fp32 peak: at equal precision tunery can be at most 2.89x it; 2.5x needs 86%."""
    peak = 1e11
    data = {"peaks": [{"bf16": {"flops_per_s": 1e10}, "fp32": {"flops_per_s": peak}}],
            "runs": {"tunery-lora": [result(1000, 1.0, 1.0, 1.0, flops=0.6 * peak)],
                     "trl-lora-fp32": [result(1000, 1.6, 2.5, 1.0, flops=0.6 * peak)]},
            "machine": {"flags": {}}, "workload": {}}
    comp = report.comparison(data)
    assert comp["ratios"]["speed_ratio"] == pytest.approx(1.6)
    line = next(x for x in report.observations(data, comp) if x.startswith("- The baseline ran at"))
    assert "37.5% of this machine's fp32 peak" in line and "2.67x its tokens/s" in line and "needs 94% MFU" in line
    data["runs"]["trl-lora-fp32"] = [result(1000, 3.0, 2.5, 1.0, flops=0.6 * peak)]  # 3x: met, no such line
    assert not any(x.startswith("- The baseline ran at") for x in report.observations(data, report.comparison(data)))
