"""tunery's side: the same workload through the public API, `tunery.train(config)`.

The config is built from `key=value` overrides exactly as `tunery train` takes them. The step
window is timed like the baseline's: from the reporter's `start` (just before the loop) to the
last step's `train` event (wall and process CPU time); tokens are run.json's `tokens_seen`
(non-padding tokens), cross-checked against the per-step events of metrics.jsonl.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.workload import Workload


def tunery_overrides(work: Workload, output_dir: Path) -> list[str]:
    """The `tunery train` overrides that express `work` (also printed in docs/benchmarks.md)."""
    overrides = [
        f"base_model={work.model_path}", f"method={work.method}", f"output_dir={output_dir}",
        f"data.train={work.train_file}", "data.val_fraction=0", f"data.max_seq_len={work.max_seq_len}",
        "data.packing=true", f"lora.rank={work.rank}", f"lora.alpha={work.alpha}", f"lora.targets={work.targets}",
        f"train.max_steps={work.steps}", f"train.batch_size={work.batch_size}", f"train.grad_accum={work.grad_accum}",
        f"train.learning_rate={work.learning_rate}", f"train.lr_schedule={work.lr_schedule}",
        f"train.warmup_steps={work.warmup_steps}", f"train.precision={work.precision}", f"train.seed={work.seed}",
        "train.weight_decay=0.0", "train.max_grad_norm=1.0",
    ]
    if work.threads:
        overrides.append(f"train.threads={work.threads}")
    overrides += [f"{k}={v}" for k, v in work.extra.get("tunery_overrides", {}).items()]
    return overrides


def run_tunery(work: Workload, output_dir: Path) -> dict:
    """Train with tunery; return timing, token counts and the adapter (or model) folder."""
    import tunery
    from tunery.config import load_train_config
    from tunery.training.progress import Reporter

    clock: dict[str, float] = {}

    class StepClock(Reporter):
        def start(self, info: dict) -> None:
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def event(self, event: dict) -> None:
            if event.get("type") == "train":
                clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()

    config = load_train_config(None, tunery_overrides(work, output_dir))
    result = tunery.train(config, reporter=StepClock())
    info = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8"))
    events = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line]
    train_events = [e for e in events if e.get("type") == "train"]
    metrics = info.get("metrics", {})
    return {
        "side": "tunery", "train_wall_s": clock["end"] - clock["start"],
        "train_cpu_s": clock["cpu_end"] - clock["cpu_start"],
        "loop_step_time_s": float(info["timings"]["train_s"]), "steps": result.steps,
        "tokens": int(metrics["tokens_seen"]), "trained_tokens": int(metrics["trained_tokens_seen"]),
        "final_train_loss": metrics.get("train_loss"),
        "step_tokens_sum": sum(int(e["tokens"]) for e in train_events),
        "adapter_dir": str(result.adapter_path) if result.adapter_path else None,
        "model_dir": str(result.model_path) if result.model_path else None,
        "settings": {"precision": info.get("precision"), "threads": info.get("threads"),
                     "packing": True, "loss_impl": info.get("hyperparameters", {}).get("loss_impl")},
    }


# What each profiled operation counts as (self CPU time on the main thread; intra-op threads work inside it).
GEMM_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::addbmm"}
PARTS = ("GEMMs", "attention kernel", "softmax and loss", "optimizer", "elementwise, copies and the rest")


def op_part(name: str) -> str | None:
    """The part of a step an operation belongs to, or None for what is not a torch operation (autograd
    nodes, Python ranges: their time is in the steps' wall time less the operations')."""
    if name in GEMM_OPS:
        return "GEMMs"
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention kernel"
    if "softmax" in name or "nll_loss" in name or "cross_entropy" in name:
        return "softmax and loss"
    if "adam" in name or name.startswith("aten::_foreach"):
        return "optimizer"
    if name.startswith("aten::"):
        return PARTS[-1]
    return None


def profile_tunery(work: Workload, output_dir: Path, skip: int, steps: int) -> dict:
    """Where tunery's step time goes: torch's profiler over `steps` steps after `skip` (warm-up) steps of
    the same job, each operation's self CPU time summed into the parts of `PARTS`."""
    from dataclasses import replace

    from torch.profiler import ProfilerActivity, profile

    import tunery
    from tunery.config import load_train_config
    from tunery.training.progress import Reporter

    profiler = profile(activities=[ProfilerActivity.CPU])
    seen: dict = {"steps": 0, "tokens": 0}

    class StepProfiler(Reporter):
        def event(self, event: dict) -> None:
            if event.get("type") != "train":
                return
            seen["steps"] += 1
            if seen["steps"] == skip:
                profiler.start()
                seen["start"] = time.perf_counter()
            elif skip < seen["steps"] <= skip + steps:
                seen["tokens"] += int(event["tokens"])
                if seen["steps"] == skip + steps:
                    profiler.stop()
                    seen["wall_s"] = time.perf_counter() - seen["start"]

    config = load_train_config(None, tunery_overrides(replace(work, steps=skip + steps), output_dir))
    tunery.train(config, reporter=StepProfiler())
    if "wall_s" not in seen:
        raise RuntimeError(f"the run stopped after {seen['steps']} steps, before the {skip + steps} profiled")
    parts = dict.fromkeys(PARTS, 0.0)
    ops: dict[str, float] = {}
    for average in profiler.key_averages():
        part = op_part(average.key)
        if part is not None:
            seconds = average.self_cpu_time_total / 1e6
            parts[part] += seconds
            ops[average.key] = seconds  # key_averages() has one entry per operation name
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:8]
    return {"side": "tunery", "skip": skip, "steps": steps, "wall_s": seen["wall_s"], "tokens": seen["tokens"],
            "parts_s": parts, "top_ops_s": dict(top)}
