"""Summaries of benchmark results: medians with spreads, ratios, targets, and the markdown report.

Pure functions over the results dictionary that `bench.run` collects (no torch except machine_info).
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

from tunery import host

GiB = 2**30

# Issue 20's targets on every machine (CPU, default model, LoRA), as (label, metric, comparison, bound):
# relative to the machine's own measured peak and to TRL + PEFT at its faster precision there.
TARGETS = [
    ("tokens/s vs baseline (TRL's faster precision)", "speed_ratio", ">=", 2.5),
    ("final val loss - baseline, absolute", "val_loss_gap", "<=", 0.02),
    ("peak RSS vs baseline", "rss_ratio", "<=", 0.5),
    ("MFU of the peak of the precision tunery used", "mfu_own", ">=", 0.40),
]
BASELINE_ROWS = ("trl-lora", "trl-lora-bf16", "trl-lora-fp32")


def machine_info() -> dict:
    import torch

    cpu_model, flags = host.cpu_model(), host.cpu_flags()
    interesting = ["avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"]
    return {"cpu": cpu_model, "logical_cpus": __import__("os").cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "flags": {f: f in flags for f in interesting}, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def spread(values: list[float]) -> dict | None:
    """Median, min and max of the values (None when there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def best_peak(peaks: list[dict], dtype: str, kind: str = "model") -> float:
    """The highest rate measured for `dtype` during the run (FLOP/s).

    `kind="model"`: `F.linear` at the model's own shapes (`linear_<dtype>`), falling back to square
    `matmul` for results saved before that was measured; `kind="square"`: square `matmul`.
    """
    if kind == "model" and all(f"linear_{dtype}" in p for p in peaks):
        return max(p[f"linear_{dtype}"]["flops_per_s"] for p in peaks)
    return max(p[dtype]["flops_per_s"] for p in peaks)


def baseline_name(rows: dict) -> str | None:
    """The baseline row: TRL's faster precision by median tokens/s (or its only one)."""
    present = [name for name in BASELINE_ROWS if rows.get(name)]
    return max(present, key=lambda name: rows[name]["tokens_per_s"]["median"]) if present else None


def compute_dtype(row: dict | None) -> str:
    """The precision a tunery row computed in (run.json's `precision.compute`)."""
    precision = (row or {}).get("settings", {}).get("precision")
    return precision.get("compute", "fp32") if isinstance(precision, dict) else "fp32"


def summarize(results: list[dict], peak_bf16: float, peak_fp32: float) -> dict:
    return {
        "tokens_per_s": spread([r["tokens"] / r["train_wall_s"] for r in results]),
        "tokens_per_cpu_s": spread([r["tokens"] / r["train_cpu_s"] for r in results if r.get("train_cpu_s")]),
        "peak_rss_gib": spread([r["peak_rss_bytes"] / GiB for r in results]),
        "val_loss": spread([r.get("val_loss") for r in results]),
        "mfu_bf16": spread([r["model_flops"] / r["train_wall_s"] / peak_bf16 for r in results]),
        "mfu_fp32": spread([r["model_flops"] / r["train_wall_s"] / peak_fp32 for r in results]),
        "tokens": results[0]["tokens"], "trained_tokens": results[0]["trained_tokens"],
        "settings": results[0].get("settings", {}),
    }


def comparison(data: dict) -> dict:
    """Per-row summaries and the tunery/baseline ratios of medians."""
    bf16, fp32 = best_peak(data["peaks"], "bf16"), best_peak(data["peaks"], "fp32")
    rows = {name: summarize(results, bf16, fp32) for name, results in data["runs"].items() if results}
    baseline = baseline_name(rows)
    out = {"rows": rows, "peak_bf16": bf16, "peak_fp32": fp32, "ratios": {}, "baseline": baseline,
           "square_bf16": best_peak(data["peaks"], "bf16", "square"),
           "square_fp32": best_peak(data["peaks"], "fp32", "square"),
           "model_shaped_peaks": all("linear_bf16" in p for p in data["peaks"]),
           "peak_threads": sorted({p["threads"] for p in data["peaks"] if p.get("threads")})}
    t, b = rows.get("tunery-lora"), rows.get(baseline)
    if t and b:
        delta = t["val_loss"]["median"] - b["val_loss"]["median"] if t["val_loss"] and b["val_loss"] else None
        out["ratios"] = {
            "speed_ratio": t["tokens_per_s"]["median"] / b["tokens_per_s"]["median"],
            "rss_ratio": t["peak_rss_gib"]["median"] / b["peak_rss_gib"]["median"],
            "val_loss_delta": delta, "val_loss_gap": abs(delta) if delta is not None else None,
            "mfu_own": t[f"mfu_{compute_dtype(t)}"]["median"],
        }
    return out


def target_lines(ratios: dict, rows: dict) -> list[str]:
    lines = []
    for label, key, op, bound in TARGETS:
        value = ratios.get(key)
        if value is None:
            lines.append(f"| {label} | {op} {bound:g} | not measured | - |")
            continue
        met = value >= bound if op == ">=" else value <= bound
        shown = (f"{value:.1%}" if key == "mfu_own" else f"{ratios['val_loss_delta']:+.3f}" if key == "val_loss_gap"
                 else f"{value:.2f}x")
        lines.append(f"| {label} | {op} {bound:g} | {shown} | {'met' if met else '**not met**'} |")
    q, lo = rows.get("tunery-qlora"), rows.get("tunery-lora")
    if q and lo:
        ratio = q["peak_rss_gib"]["median"] / lo["peak_rss_gib"]["median"]
        lines.append(f"| QLoRA peak RSS vs LoRA | < 1 | {ratio:.2f}x | {'met' if ratio < 1 else '**not met**'} |")
    return lines


def fmt(s: dict | None, pattern: str = "{:.0f}", scale: float = 1.0) -> str:
    if not s:
        return "-"
    med = pattern.format(s["median"] * scale)
    if s["n"] == 1:
        return med
    return f"{med} ({pattern.format(s['min'] * scale)}-{pattern.format(s['max'] * scale)})"


ROW_TITLES = {"tunery-lora": "tunery LoRA", "trl-lora": "TRL SFTTrainer + PEFT LoRA (baseline)",
              "trl-lora-bf16": "TRL SFTTrainer + PEFT LoRA, bf16 autocast",
              "trl-lora-fp32": "TRL SFTTrainer + PEFT LoRA, fp32",
              "tunery-lora-extra": "tunery LoRA, extra overrides", "tunery-qlora": "tunery QLoRA",
              "tunery-full": "tunery full fine-tuning", "profile": "tunery's step profile"}


def row_titles(data: dict) -> dict:
    titles = dict(ROW_TITLES)
    baseline = comparison(data)["baseline"]
    if baseline and baseline != "trl-lora":
        titles[baseline] += " (baseline: TRL's faster)"
    if data.get("extra_tunery"):
        titles["tunery-lora-extra"] = "tunery LoRA + " + " ".join(f"`{o}`" for o in data["extra_tunery"])
    return titles


def table_lines(comp: dict, titles: dict | None = None) -> list[str]:
    baseline = comp["baseline"]
    base = comp["rows"].get(baseline)
    # Where bf16 products run slower than fp32 (no bf16 units), no run computes in bf16 and a share of that
    # rate says nothing (it read 407% on an AVX2-only EPYC): the column is left empty.
    bf16_meaningful = comp["peak_bf16"] >= comp["peak_fp32"]
    lines = ["| run | reps | real tokens/s | vs baseline | tokens per CPU-s | peak RSS GiB | vs baseline | "
             "final val loss | MFU (bf16 peak) | MFU (fp32 peak) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in comp["rows"].items():
        speed = rss = "-"
        if base and name != baseline:
            speed = f"{row['tokens_per_s']['median'] / base['tokens_per_s']['median']:.2f}x"
            rss = f"{row['peak_rss_gib']['median'] / base['peak_rss_gib']['median']:.2f}x"
        lines.append(f"| {(titles or ROW_TITLES).get(name, name)} | {row['tokens_per_s']['n']} | {fmt(row['tokens_per_s'])} | "
                     f"{speed} | {fmt(row['tokens_per_cpu_s'])} | {fmt(row['peak_rss_gib'], '{:.2f}')} | {rss} | {fmt(row['val_loss'], '{:.4f}')} | "
                     f"{fmt(row['mfu_bf16'] if bf16_meaningful else None, '{:.1f}%', 100)} | "
                     f"{fmt(row['mfu_fp32'], '{:.1f}%', 100)} |")
    return lines


def render_summary(data: dict) -> str:
    comp = comparison(data)
    lines = table_lines(comp) + ["", f"peaks ({peak_kind(comp)}): bf16 {comp['peak_bf16'] / 1e12:.3f} TFLOP/s, "
                                     f"fp32 {comp['peak_fp32'] / 1e12:.3f} TFLOP/s", "",
                                 "| target | bound | tunery | status |", "|---|---|---|---|"]
    return "\n".join(lines + target_lines(comp["ratios"], comp["rows"]))


def render_markdown(data: dict, supplements: list[dict] | None = None, render_command: str | None = None,
                    facts: dict | None = None, levers: list[dict] | None = None) -> str:
    """docs/benchmarks.md: what ran, on what, how each number is computed, and where tunery stands."""
    comp, m, w = comparison(data), data["machine"], data["workload"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    ts, shape = data["train_stats"], data["model_shape"]
    kind = "a reduced (`--quick`) run" if data.get("quick") else "a full run"
    lines = [
        "# Benchmarks", "",
        "Generated by `make bench` (`python -m bench.run`); do not edit by hand. "
        f"This is {kind} from {data['date_utc']} ({data['duration_s'] / 60:.0f} min).", "",
        *([] if data.get("complete", True) else
          ["**Incomplete run**: the bench was stopped before its last row; only what finished is shown.", ""]),
        "## Reproduce", "", "```", data["command"], "```", "",
        "(`make bench BENCH_ARGS='...'` with the same options runs the same; `--work-dir` and `--output` only "
        "say where files go.)", "",
        *([f"This page was assembled from saved results (bench/results/) with `{render_command}`.", ""]
          if render_command else []),
        "## Machine", "",
        f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} "
        f"(capability {m['cpu_capability']}, {m['torch_threads']} threads), Python {m['python']}",
        f"- CPU flags: {flags}",
        f"- code: {data.get('code', {}).get('start', '?')} at start, {data.get('code', {}).get('end', '?')} at end",
        f"- load average (1 min) at start / end: {_load(data, 'start')} / {_load(data, 'end')} "
        f"on {m['logical_cpus']} CPUs (a decaying average: it counts work that ended up to a minute before, "
        "the bench's own jobs included)",
        *([f"- other tasks running at start / end (runnable tasks in /proc/stat, less the bench): "
           f"{data['busy_cores']['start']} / {data['busy_cores']['end']}"] if data.get("busy_cores") else []),
        *peak_lines(comp), "",
        "## Workload (identical on both sides)", "",
        f"- model `{Path(w['model_path']).name}`; data: the first {ts['examples']} examples of "
        f"`{_rel(data['sources']['train'])}` that fit max_seq_len {w['max_seq_len']} "
        f"({ts['tokens']} tokens, {ts['trained_tokens']} trained), each seen exactly once",
        f"- LoRA rank {w['rank']}, alpha {w['alpha']:g}, all linear layers, dropout 0; AdamW, lr "
        f"{w['learning_rate']:g}, {w['lr_schedule']} after {w['warmup_steps']} warmup steps, weight decay 0, "
        f"grad clip 1.0; {w['steps']} steps of global batch {w['batch_size'] * w['grad_accum']} "
        f"({w['batch_size']} x accum {w['grad_accum']}); "
        + (f"seeds {w['seed']}..{w['seed'] + data['repetitions'] - 1} (repetition i uses seed + i on both sides)"
           if data.get("vary_seed") else f"seed {w['seed']}"),
        f"- validation: {data['val_stats']['examples']} examples of `{_rel(data['sources']['validation'])}`", "",
        "## Results", "",
        "Medians over repetitions, (min-max) in brackets. tunery and the baseline alternate run by run.", "",
        *table_lines(comp, titles=row_titles(data)), "",
        "## Targets (issue 20)", "", "| target | bound | tunery | status |", "|---|---|---|---|",
        *target_lines(comp["ratios"], comp["rows"]), "",
        *profile_lines(data, comp),
        *(across_runs(data, supplements) if supplements else []),
        "## Settings each side used", "",
        f"- tunery: `{data['tunery_command']}` (an empty empty.yaml; the harness calls `tunery.train` with the same overrides); "
        f"{_settings(comp['rows'].get('tunery-lora'))}",
        f"- baseline: TRL `SFTTrainer` + PEFT `LoraConfig`; {_settings(comp['rows'].get(comp['baseline']))}",
    ]
    for name, reason in data.get("failures", {}).items():
        lines.append(f"- **{ROW_TITLES.get(name, name)} failed**: `{reason}`")
    if data.get("extra_tunery"):
        lines.append(f"- extra tunery row: the tunery LoRA run plus `{' '.join(data['extra_tunery'])}`")
    lines += ["", "## Observations (computed from this run)", "", *observations(data, comp)]
    for extra in supplements or []:
        lines += ["", f"## Supplementary run ({extra['date_utc']})", "", "```", extra["command"], "```", "",
                  f"Same workload unless the command says otherwise; code {extra.get('code', {}).get('start', '?')}, "
                  f"load average {_load(extra, 'start')} / {_load(extra, 'end')}.", "",
                  *([f"Note: {extra['note']}", ""] if extra.get("note") else []),
                  *table_lines(comparison(extra), titles=row_titles(extra)), "",
                  "| target | bound | tunery | status |", "|---|---|---|---|",
                  *target_lines(comparison(extra)["ratios"], comparison(extra)["rows"]), "",
                  *(profile_lines(extra, comparison(extra)) or speed_block(extra, comparison(extra))),
                  f"- tunery: {_settings(comparison(extra)['rows'].get('tunery-lora'))}",
                  f"- baseline: {_settings(comparison(extra)['rows'].get(comparison(extra)['baseline']))}"]
    for measured in levers or []:
        lines += lever_lines(measured)
    lines += machine_kinds([data, *(supplements or [])])
    lines += gpu_lines()
    lines += facts_lines(facts) if facts else []
    lines += ["", "## How each number is computed", "", *HOW, "",
              f"Model shape used: {shape['decoder_linear_params'] / 1e6:.1f}M decoder linear weights, "
              f"{shape['lora_params'] / 1e6:.2f}M LoRA weights at rank {w['rank']}, {shape['layers']} layers, "
              f"vocabulary {shape['vocab_size']} x hidden {shape['hidden_size']}.", ""]
    return scrub_paths("\n".join(lines), [data, *(supplements or [])])


def peak_kind(comp: dict) -> str:
    return "`F.linear` at the model's shapes" if comp["model_shaped_peaks"] else "square matmul"


def peak_lines(comp: dict) -> list[str]:
    threads = comp.get("peak_threads")
    at = f", {'/'.join(map(str, threads))} thread{'s' if threads != [1] else ''}" if threads else ""
    lines = [f"- measured peaks (best of the run{at}), {peak_kind(comp)}: bf16 {comp['peak_bf16'] / 1e12:.3f} TFLOP/s, "
             f"fp32 {comp['peak_fp32'] / 1e12:.3f} TFLOP/s (bf16 {comp['peak_bf16'] / comp['peak_fp32']:.2f}x fp32)"]
    if comp["model_shaped_peaks"]:
        lines.append(f"- square matmul (1024-4096) for reference: bf16 {comp['square_bf16'] / 1e12:.3f} TFLOP/s, "
                     f"fp32 {comp['square_fp32'] / 1e12:.3f} TFLOP/s")
    return lines


KEPT = {True: "yes", False: "no", None: "-"}  # None: nothing to keep or drop (measured only)


def lever_lines(levers: dict) -> list[str]:
    """Speed levers measured on one machine kind: each A/B ratio (kept or not), both peaks, MFU before and after.

    Each ratio comes from steps of the two variants alternating in one process on the same data, so
    load that changes over minutes touches both alike; absolute rates on a shared machine do not.
    """
    m = levers["machine"]
    how = levers.get("peak_how", "interleaved with the steps, median")
    threads = f"{levers['peak_threads']} thread{'s' if levers['peak_threads'] != 1 else ''}"
    lines = ["", f"## Speed levers: {m['cpu']} ({' '.join(m['flags'])})", "",
             f"{levers['date_utc']}; {levers['conditions']}", "",
             f"- measured peaks (`F.linear` at the model's shapes, {threads}, {how}): bf16 {levers['peak_gflops_per_s']['bf16']:.0f} GFLOP/s, fp32 "
             f"{levers['peak_gflops_per_s']['fp32']:.0f} GFLOP/s (bf16 "
             f"{levers['peak_gflops_per_s']['bf16'] / levers['peak_gflops_per_s']['fp32']:.1f}x fp32)",
             f"- workload: {levers['workload']}",
             f"- MFU of the bf16 peak, tunery's step: {levers['mfu']['before']:.1%} before, "
             f"{levers['mfu']['after']:.1%} after ({levers['mfu']['note']})", "",
             "| lever | tunery step, A/B | kept | notes |", "|---|---|---|---|"]
    for lever in levers["levers"]:
        ratio = f"{lever['ratio']:.2f}x" if lever.get("ratio") is not None else "-"
        lines.append(f"| {lever['lever']} | {ratio} | {KEPT[lever['kept']]} | {lever['notes']} |")
    lines += ["", *[f"- {line}" for line in levers.get("profile", [])]]
    return lines


def machine_kinds(runs: list[dict]) -> list[str]:
    """One line per machine kind (CPU model and flags) the runs on this page met, with its peaks and ratio."""
    lines = ["", "## Machine kinds met", "",
             "A CPU's bf16 units decide which precision is fast, so each kind has its own table above.", "",
             "| CPU | flags | runs | bf16 / fp32 peak | tunery vs baseline (tokens/s) |", "|---|---|---|---|---|"]
    kinds: dict[tuple, list[dict]] = {}
    for run in runs:
        m = run["machine"]
        kinds.setdefault((m["cpu"], tuple(sorted(f for f, on in m["flags"].items() if on))), []).append(run)
    for (cpu, flags), group in kinds.items():
        comps = [comparison(r) for r in group]
        ratios = [f"{c['ratios']['speed_ratio']:.2f}x" for c in comps if c["ratios"]]
        peaks = ", ".join(f"{c['peak_bf16'] / c['peak_fp32']:.2f}x" for c in comps)
        lines.append(f"| {cpu} | {' '.join(flags) or '-'} | {', '.join(r['date_utc'] for r in group)} | {peaks} "
                     f"| {', '.join(ratios) or '-'} |")
    return lines


def gpu_lines() -> list[str]:
    """bench/gpu.sh's runs (CUDA, throughput only), or the statement that it has not run."""
    results = sorted((Path(__file__).parent / "results").glob("gpu-*/*.json"))
    lines = ["", "## GPU (`bench/gpu.sh`)", "",
             "CUDA, LoRA in bf16, tunery against TRL + PEFT on the default model and on a 1.1B model built from a "
             "config with random weights (throughput only), 100 steps of batch 4, two repetitions, under 8 minutes."]
    if not results:
        return lines + ["", "**It has not run yet**: no GPU has been lent to the sessions that produced this page."]
    lines += ["", "| run | GPU | model | tunery tokens/s | TRL tokens/s (bf16) | tunery / TRL | GPU memory "
              "tunery / TRL (max allocated) | complete | code |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for path in results:
        run = json.loads(path.read_text(encoding="utf-8"))
        sides = {side: run["runs"].get(f"{side}-lora", []) for side in ("tunery", "trl")}
        speed = {side: statistics.median(r["tokens"] / r["train_wall_s"] for r in rs) if rs else None
                 for side, rs in sides.items()}
        memory = {side: max((r.get("cuda_max_allocated_bytes") or 0) for r in rs) / 2**30 if rs else None
                  for side, rs in sides.items()}
        ratio = f"{speed['tunery'] / speed['trl']:.2f}x" if speed["tunery"] and speed["trl"] else "-"
        mem = f"{memory['tunery']:.2f} / {memory['trl']:.2f} GiB" if memory["tunery"] and memory["trl"] else "-"
        reps = ", ".join(f"{side} {len(rs)}" for side, rs in sides.items())
        lines.append(f"| `{_rel(str(path))}` | {run['machine'].get('cuda') or '-'} | "
                     f"{Path(run['workload']['model_path']).name} | "
                     + " | ".join(f"{speed[side]:.0f}" if speed[side] else "-" for side in ("tunery", "trl"))
                     + f" | {ratio} | {mem} | {'yes' if run.get('complete') else 'no'} ({reps} repetitions) | "
                     f"{run.get('code', {}).get('start', '-')} |")
        if run.get("note"):
            notes.append(f"- `{_rel(str(path))}`: {run['note']}")
    return lines + ["", *notes] if notes else lines


def scrub_paths(text: str, runs: list[dict]) -> str:
    """Put placeholders for where this machine kept things: the page describes runs, not a machine."""
    for run in runs:
        work = run.get("workload", {})
        if work.get("model_path"):
            text = text.replace(work["model_path"], Path(work["model_path"]).name)
        if work.get("train_file"):
            text = text.replace(str(Path(work["train_file"]).parent.parent), "WORK_DIR")
    return text.replace(str(Path.home()), "~")


HOW = [
    "- **real tokens/s**: non-padding tokens fed to the model during the training steps, divided by the wall "
    "time from the start of the first step to the end of the last (model loading, tokenization, validation "
    "and the final save are outside the window). Both sides see the same examples once each, so both count "
    "the same tokens (the harness checks it). Baseline: timed by a `TrainerCallback` (`on_train_begin` to the "
    "last `on_step_end`), tokens counted in `training_step`. tunery: timed by a `Reporter` (`start` to the "
    "last `train` event), tokens from run.json `metrics.tokens_seen`.",
    "- **tokens per CPU-s**: the same tokens over the process CPU time (user + system, all threads) in the "
    "same window; less sensitive than wall time to other processes taking the cores, but spin-waiting "
    "threads count too.",
    "- **baseline settings** (TRL's documented options, chosen for this CPU): `padding_free=True` (no padding "
    "compute; TRL's `packing=True` would re-cut examples into fixed-length rows and change what a step holds), "
    "`max_length=None` because the subset is already filtered to fit, `assistant_only_loss=True` with the "
    "model's template plus `{% generation %}` markers (bench/templates, checked to render identically), "
    "`bf16=True` autocast (TRL's default) unless `--baseline-precision fp32`, `gradient_checkpointing=False` "
    "(TRL defaults it on; memory is not short here), TRL's default fused AdamW, no evaluation or saving "
    "during training.",
    "- **peak RSS**: the training process's own high-water mark (`VmHWM` from /proc/self/status at its end; "
    "`ru_maxrss` from `os.wait4` where /proc is missing), each run in its own process, model load included.",
    "- **final val loss**: after training, a separate process loads the base model in fp32 with the saved "
    "adapter (or full model) and takes the mean cross-entropy over assistant tokens (content + end-of-turn, "
    "tunery's chat encoding) of the validation examples; the same code for both sides. A QLoRA adapter is "
    "evaluated on the unquantized base, like the LoRA ones.",
    "- **MFU**: model FLOPs / train window / measured peak. Model FLOPs per token: 4 N for frozen decoder "
    "linear weights (forward 2 N + backward to activations 2 N), 6 N for trained ones (adds weight gradients), "
    "LoRA adds 6 r (d_in + d_out) per adapted linear, causal attention 12 x attention width x layers x mean "
    "context, and the output head 4 V d only on trained (loss) tokens. Computed from the model shape and the "
    "data, the same for both sides, whatever each implementation actually computes. The bf16 column is left "
    "empty (-) where bf16 products measured slower than fp32: no run computes in bf16 on such a CPU.",
    "- **peaks**: in bf16 and in fp32, at the threads the runs use (`--threads`; without it torch's default, one "
    "per core; results saved before this was fixed measured at torch's default whatever `--threads` said), measured at the start and "
    "the end of the run, the best kept (other processes share this CPU, so every number here is noisy): "
    "`F.linear` at the model's own shapes (each decoder linear over a micro-batch of 256 and of 1024 tokens, "
    "the faster kept: tunery's CPU pieces, 256 tokens until 2026-12-04, up to 1024 since; results saved before "
    "then measured at 256 only), and square `torch.matmul` (1024-4096) for reference. MFU is taken against the "
    "model-shaped peaks (square ones for results saved before those were measured); the MFU target uses "
    "the peak of the precision tunery ran in (`precision: auto` measures and records both rates in run.json).",
    "- **baseline**: TRL + PEFT runs with bf16 autocast and in fp32 (`--baseline-precision both`, the "
    "default); the faster one by median tokens/s is the baseline every ratio is taken against. Where the "
    "CPU's bf16 `F.linear` at the model's shapes measures below 0.75x its fp32 (bf16 emulated, no bf16 "
    "units), the bf16 row cannot be the faster one and is not run (the observations say so).",
]


def facts_lines(facts: dict) -> list[str]:
    """Issue 3's fact-recall run (examples/facts/measure.py): recall on trained and reworded questions."""
    auto = ", ".join(f"{k.split('.')[-1]} {v}" for k, v in facts["auto"].items())
    trained, reworded = facts["recall_trained"], facts["recall_reworded"]
    return ["", f"## Teaching facts ({facts['facts']} invented facts, every hyperparameter `auto`)", "",
            f"`{facts['command']}` ({facts['date_utc']}; {facts['conditions']}); what `auto` chose: {auto}; "
            f"{facts['steps']} steps in {facts['train_s']:.0f} s at {facts['tokens_per_s']} tokens/s. "
            "Greedy answers to every training question, and to a reworded version never trained:", "",
            "| questions | exact trained answer | answer contains the fact's key |", "|---|---|---|",
            f"| as trained | **{trained['exact']:.1%}** | {trained['key']:.1%} |",
            f"| reworded | {reworded['exact']:.1%} | {reworded['key']:.1%} |", "",
            "| target (issue 20) | bound | this run | status |", "|---|---|---|---|",
            f"| recall (key), trained questions | >= 95% | {trained['key']:.1%} | "
            f"{'met' if trained['key'] >= 0.95 else '**not met**'} |",
            f"| recall (key), reworded questions | >= 60% | {reworded['key']:.1%} | "
            f"{'met' if reworded['key'] >= 0.6 else '**not met**'} |",
            f"| training time | <= 600 s | {facts['train_s']:.0f} s | "
            f"{'met' if facts['train_s'] <= 600 else '**not met**'} |", "",
            "docs/training.md (\"Teaching facts\") has the other runs, the time this recipe takes on an idle "
            "machine, and why."]


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parent.parent))
    except ValueError:
        return path


def _settings(row: dict | None) -> str:
    if not row:
        return "not run"
    return ", ".join(f"{k} {v}" for k, v in row["settings"].items())


def _load(data: dict, when: str) -> str:
    value = data.get("load_avg", {}).get(when)
    return f"{value[0]:.1f}" if value else "?"


def profile_lines(data: dict, comp: dict) -> list[str]:
    """Where tunery's step time went (the bench's `profile` job), or nothing for results without one."""
    prof = data.get("profile")
    if not prof or not prof.get("wall_s"):
        return []
    steps, wall, parts = prof["steps"], prof["wall_s"], prof["parts_s"]
    rest = max(wall - sum(parts.values()), 0.0)
    rows = [*parts.items(), ("outside torch's operations (Python, autograd's bookkeeping, the profiler)", rest)]
    lines = ["### Where tunery's step time goes", "",
             f"torch's profiler over steps {prof['skip'] + 1}-{prof['skip'] + steps} of a separate tunery run of the "
             f"same job ({prof['tokens']} tokens, {prof['tokens'] / wall:.0f} tokens/s with the profiler on): each "
             "operation's self CPU time on the main thread (its intra-op threads work inside it), summed by part.", "",
             "| part | s a step | share of the step |", "|---|---|---|",
             *(f"| {name} | {seconds / steps:.3f} | {seconds / wall:.0%} |" for name, seconds in rows), ""]
    t, runs = comp["rows"].get("tunery-lora"), data["runs"].get("tunery-lora") or []
    if t and runs and runs[0].get("model_flops") and parts.get("GEMMs"):
        dtype = compute_dtype(t)
        rate = runs[0]["model_flops"] / runs[0]["tokens"] * prof["tokens"] / parts["GEMMs"]
        lines += [f"- The GEMMs ran at about {rate / 1e9:.0f} GFLOP/s, {rate / comp[f'peak_{dtype}']:.0%} of the "
                  f"measured {dtype} peak (all the model's FLOPs over the GEMMs' time, attention's few percent "
                  "included)."]
    top = ", ".join(f"`{name}` {seconds / steps:.3f} s" for name, seconds in prof.get("top_ops_s", {}).items())
    if top:
        lines += [f"- Largest operations a step: {top}."]
    return [*lines, *speed_lines(data, comp), ""]


def speed_block(data: dict, comp: dict) -> list[str]:
    lines = speed_lines(data, comp)
    return [*lines, ""] if lines else []


def speed_lines(data: dict, comp: dict) -> list[str]:
    """A baseline row left out, and what a missed speed target needs: for the main run and each supplement."""
    out = [f"- {ROW_TITLES.get(name, name)} not run: {why}."
           for name, why in (data.get("baseline_skipped") or {}).items()]
    rows = comp["rows"]
    t, b = rows.get("tunery-lora"), rows.get(comp.get("baseline"))
    speed_bound = next(bound for _, key, _, bound in TARGETS if key == "speed_ratio")
    ratio_now = comp.get("ratios", {}).get("speed_ratio")
    if t and b and ratio_now is not None and ratio_now < speed_bound:
        dtype = compute_dtype(t)
        theirs = b[f"mfu_{dtype}"]["median"]
        if not (0 < theirs < 1 and comp["ratios"]["mfu_own"] < 1):  # peaks measured at another moment of a load
            return out
        out.append(f"- The baseline ran at {theirs:.1%} of this machine's {dtype} peak (the MFU column): with the same "
                   f"work in the same precision, tunery at the whole peak would be {1 / theirs:.2f}x its tokens/s, "
                   f"so {speed_bound:g}x needs {speed_bound * theirs:.0%} MFU here (tunery: "
                   f"{comp['ratios']['mfu_own']:.1%}).")
    return out


def observations(data: dict, comp: dict) -> list[str]:
    """Plain statements the numbers support, so a regenerated report stays honest without hand edits."""
    out, rows, flags = [], comp["rows"], data["machine"]["flags"]
    ratio = comp["peak_bf16"] / comp["peak_fp32"]
    if ratio < 1:
        units = ("no bf16 units (neither avx512_bf16 nor AMX)" if not (flags.get("avx512_bf16") or flags.get("amx_bf16"))
                 else f"avx512_bf16 {'but no AMX' if not flags.get('amx_bf16') else 'and AMX'}")
        out.append(f"- bf16 matmuls run at {ratio:.2f}x the fp32 rate here: the CPU exposes {units}, so bf16 "
                   "compute does not pay on this machine; MFU against the bf16 peak therefore flatters every row.")
    else:
        out.append(f"- bf16 matmuls run at {ratio:.1f}x the fp32 rate here.")
    if not data.get("profile"):  # else they follow the profile
        out += speed_lines(data, comp)
    t, b = rows.get("tunery-lora"), rows.get(comp["baseline"])
    load, cpus = (data.get("load_avg", {}).get("start") or [0])[0], data["machine"].get("logical_cpus") or 1
    busy = data.get("busy_cores")
    if data.get("conditions"):  # written by whoever ran it, for results saved before busy_cores was recorded
        out.append(f"- Conditions: {data['conditions']}")
    elif busy:
        if max(busy.values()) >= 1:
            out.append(f"- **Contended machine**: other tasks kept {busy['start']} core(s) busy at the start and "
                       f"{busy['end']} at the end (runnable tasks in /proc/stat, less the bench): these are not "
                       "final figures; the targets are judged on a full run on an idle machine.")
    elif load > 0.5 * cpus:
        out.append(f"- **Contended machine** (load average {load:.1f} on {cpus} CPUs at the start): other work "
                   "took the cores, so these are not final figures; the targets are judged on a full run "
                   "(`make bench`, at least 100 steps) on an idle machine.")
    if t and b:
        ours, theirs = t["settings"].get("threads"), b["settings"].get("torch_threads")
        if ours != theirs:
            out.append(f"- **Thread counts differ**: tunery ran {ours} torch thread(s), the baseline {theirs}. "
                       "On a busy machine, more threads than free cores slow a run down a lot, so compare with "
                       "a run where both sides use the same `--threads`.")
    x = rows.get("tunery-lora-extra")
    if t and x:
        out.append(f"- tunery LoRA with `{' '.join(data.get('extra_tunery', []))}`: "
                   f"{x['tokens_per_s']['median'] / t['tokens_per_s']['median']:.2f}x the tokens/s of the default "
                   f"row, peak RSS {x['peak_rss_gib']['median']:.2f} vs {t['peak_rss_gib']['median']:.2f} GiB.")
    if data["workload"].get("warmup_steps", 0) > 0:
        out.append(f"- **Schedules differ** with {data['workload']['warmup_steps']} warmup steps: transformers "
                   "starts warmup at lr 0 (step / warmup), tunery at peak / warmup ((step + 1) / warmup), so "
                   "tunery takes larger early steps; the val loss comparison favours tunery. Rerun with "
                   "`--warmup-steps 0` (the default) for identical learning rates at every step.")
    if data.get("quick"):
        out.append("- This is a reduced run: with few steps, one-time costs in the first step (kernel "
                   "selection, allocator warm-up) weigh more than in a long run, on both sides alike.")
    return out


def across_runs(data: dict, supplements: list[dict]) -> list[str]:
    """One line per run (this one and the supplementary ones): the conditions next to the ratios."""
    lines = ["## tunery LoRA vs the baseline across the runs on this page", "",
             "| run | baseline precision | threads tunery / baseline | tokens/s ratio | tokens per CPU-s ratio "
             "| peak RSS ratio | val loss delta |", "|---|---|---|---|---|---|---|"]
    for index, run in enumerate([data, *supplements]):
        rows = comparison(run)["rows"]
        t, b = rows.get("tunery-lora"), rows.get(comparison(run)["baseline"])
        if not (t and b):
            continue
        cpu = (t["tokens_per_cpu_s"]["median"] / b["tokens_per_cpu_s"]["median"]
               if t["tokens_per_cpu_s"] and b["tokens_per_cpu_s"] else None)
        delta = t["val_loss"]["median"] - b["val_loss"]["median"] if t["val_loss"] and b["val_loss"] else None
        lines.append(
            f"| {'main' if index == 0 else f'supplementary {index}'} ({run['date_utc']}) | "
            f"{'bf16 autocast' if b['settings'].get('bf16_autocast') else 'fp32'} | "
            f"{t['settings'].get('threads')} / {b['settings'].get('torch_threads')} | "
            f"{t['tokens_per_s']['median'] / b['tokens_per_s']['median']:.2f}x | "
            f"{f'{cpu:.2f}x' if cpu else '-'} | "
            f"{t['peak_rss_gib']['median'] / b['peak_rss_gib']['median']:.2f}x | "
            f"{f'{delta:+.3f}' if delta is not None else '-'} |")
    return lines + [""]
