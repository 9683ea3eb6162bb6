"""`make bench`: tunery against TRL SFTTrainer + PEFT on the same LoRA work, then LoRA vs QLoRA vs full.

Each training run is its own process (peak RSS from its rusage); the sides alternate over several
repetitions (seeds); TRL runs with bf16 autocast and in fp32, and the faster is the baseline; tunery
runs with `precision: auto`. The peaks (bf16 and fp32, square matmul and `F.linear` at the model's
own shapes) are measured before and after. The report gives medians with min-max spreads and
writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from tunery import host

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="Base model reference (tunery alias or folder).")
    p.add_argument("--data", default=str(REPO / "examples" / "helpdesk"),
                   help="Folder with train.jsonl and validation.jsonl (chat format).")
    p.add_argument("--steps", type=int, default=100,
                   help="Optimizer steps per training run (a full run: at least 100; each example is seen once).")
    p.add_argument("--batch-size", type=int, default=4, help="Examples per micro-batch.")
    p.add_argument("--grad-accum", type=int, default=1, help="Micro-batches per optimizer step.")
    p.add_argument("--max-seq-len", type=int, default=512, help="Longest example kept (longer ones are skipped).")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank.")
    p.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha.")
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="Peak learning rate (about what tunery's `auto` picks for LoRA on a 135M model).")
    p.add_argument("--warmup-steps", type=int, default=0,
                   help="Linear warmup steps, then cosine decay. 0 by default: the two sides start warmup "
                        "differently (transformers at lr 0, tunery at peak/warmup), so only 0 gives both "
                        "the same learning rate at every step.")
    p.add_argument("--seed", type=int, default=42, help="Seed for both sides.")
    p.add_argument("--same-seed", dest="vary_seed", action="store_false",
                   help="Use --seed for every repetition. Otherwise repetition i uses seed + i on both sides "
                        "(data order and LoRA initialisation) and each is evaluated, so the validation-loss "
                        "comparison is a median over seeds, not one draw (seeds vary: %(default)s).")
    p.add_argument("--repetitions", type=int, default=3, help="Alternating repetitions of tunery and the baseline.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for both sides (default: each side's own choice; tunery's `auto` "
                        "looks at the load, torch's default is one per core).")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"], help="tunery train.precision.")
    p.add_argument("--baseline-precision", default="both", choices=["both", "bf16", "fp32"],
                   help="Baseline: TRL with bf16 autocast (its default) and in fp32, the faster one being the "
                        "baseline (`both`), or only one of them.")
    p.add_argument("--methods", default="qlora,full",
                   help="tunery methods to compare with its LoRA (comma list; empty for none).")
    p.add_argument("--extra-tunery", action="append", default=[], metavar="KEY=VALUE",
                   help="Extra tunery override for an additional tunery-only LoRA row, e.g. train.precision=fp32.")
    p.add_argument("--val-examples", type=int, default=60, help="Validation examples for the final loss.")
    p.add_argument("--eval-all", action="store_true", help="Evaluate every repetition (default: the first of each side).")
    p.add_argument("--no-baseline", action="store_true", help="Skip the TRL runs (tunery only).")
    p.add_argument("--throughput-only", action="store_true",
                   help="Measure speed and memory only: no validation-loss evaluation (bench/gpu.sh's random-weight model).")
    p.add_argument("--quick", action="store_true",
                   help="Reduced run: 5 steps of batch 4, 2 repetitions, 16 validation examples.")
    p.add_argument("--work-dir", default=None, help="Where runs and data subsets go (default: a temp folder).")
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks.md"), help="Markdown report to write.")
    p.add_argument("--results-json", default=None, help="Also write all raw results here.")
    p.add_argument("--render", metavar="RESULTS_JSON", default=None,
                   help="Only re-render --output from a saved results.json (no training).")
    p.add_argument("--supplement", metavar="RESULTS_JSON", action="append", default=[],
                   help="With --render: also show these runs' tables as supplementary runs.")
    p.add_argument("--facts", metavar="FACTS_JSON", default=None,
                   help="With --render: add the fact-recall section from this output of examples/facts/measure.py.")
    p.add_argument("--levers", metavar="LEVERS_JSON", action="append", default=[],
                   help="With --render: add a section of speed levers measured on one machine kind (A/B interleaved "
                        "in one process; see bench/results/*levers*.json).")
    p.add_argument("--profile-steps", type=int, default=8,
                   help="After the runs, profile this many tunery steps (after 3 warm-up steps) of the same job "
                        "with torch's profiler: the report shows where a step's time goes (0: no profile; "
                        "--quick: 0 unless given).")
    p.add_argument("--job-timeout-s", type=float, default=3600, help="Kill a job that runs longer than this.")
    if "--quick" in (argv if argv is not None else sys.argv[1:]):
        # --quick changes defaults only: explicit options still win (e.g. --quick --repetitions 1).
        p.set_defaults(steps=5, batch_size=4, repetitions=2, val_examples=16, profile_steps=0)
    return p.parse_args(argv)


def run_job(job: str, spec: dict, work_dir: Path, tag: str, timeout_s: float) -> dict:
    """Run one worker process; its result JSON plus its own peak RSS and wall time."""
    spec_path, out_path, log_path = (work_dir / f"{tag}.{ext}" for ext in ("spec.json", "out.json", "log"))
    spec_path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "bench.worker", job, str(spec_path), str(out_path)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        status, rusage = wait_with_timeout(proc, timeout_s)
    if status != 0 or not out_path.is_file():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"bench job {tag} ({job}) failed with status {status}; log {log_path}:\n{tail}")
    result = json.loads(out_path.read_text(encoding="utf-8"))
    # VmHWM counts only the worker's own memory; ru_maxrss (kilobytes on Linux) can also hold the
    # parent's size from before exec, so it is the fallback where /proc does not exist.
    result["ru_maxrss_bytes"] = rusage.ru_maxrss * 1024
    result["peak_rss_bytes"] = result.get("vm_hwm_bytes") or result["ru_maxrss_bytes"]
    result["job_wall_s"] = time.perf_counter() - started
    return result


def wait_with_timeout(proc: subprocess.Popen, timeout_s: float):
    """`os.wait4` gives this child's own rusage (RUSAGE_CHILDREN would mix all children)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.2)


def prepare(args, work_dir: Path):
    """Resolve the model, write the train/validation subsets, read the model's shape."""
    from bench.flops import read_model_shape
    from bench.workload import Workload, find_split, prepare_subset
    from tunery.models import load_tokenizer, resolve_model

    model_path = str(resolve_model(args.model).path)
    data_dir = Path(args.data)
    train_src = find_split(data_dir, ("train",))
    val_src = find_split(data_dir, ("validation", "val", "valid"))
    if train_src is None or val_src is None:
        raise SystemExit(f"{data_dir}: needs train.jsonl and validation.jsonl (chat format)")
    tokenizer = load_tokenizer(args.model)
    work = Workload(model_path=model_path, train_file=str(work_dir / "data" / "train.jsonl"),
                    val_file=str(work_dir / "data" / "validation.jsonl"), rank=args.rank, alpha=args.alpha,
                    learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, batch_size=args.batch_size,
                    grad_accum=args.grad_accum, steps=args.steps, max_seq_len=args.max_seq_len, seed=args.seed,
                    precision=args.precision, threads=args.threads)
    train_stats = prepare_subset(train_src, Path(work.train_file), tokenizer, count=work.train_examples,
                                 max_seq_len=args.max_seq_len)
    val_stats = prepare_subset(val_src, Path(work.val_file), tokenizer, count=args.val_examples,
                               max_seq_len=args.max_seq_len)
    sources = {"train": str(train_src), "validation": str(val_src)}
    return work, train_stats, val_stats, read_model_shape(model_path), sources


def train_and_eval(side: str, work, work_dir: Path, tag: str, *, evaluate: bool, timeout_s: float,
                   expected_tokens: int) -> dict:
    out_dir = work_dir / "runs" / tag
    spec = {"workload": asdict(work), "output_dir": str(out_dir)}
    print(f"[bench] {tag}: training ({side}, {work.method})", flush=True)
    result = run_job(side, spec, work_dir, tag, timeout_s)
    result["tokens_per_s"] = result["tokens"] / result["train_wall_s"]
    # Both sides must have trained on exactly the subset, once: otherwise the comparison is off.
    result["tokens_match_subset"] = result["tokens"] == expected_tokens
    if not result["tokens_match_subset"]:
        print(f"[bench] WARNING {tag}: {result['tokens']} tokens trained, the subset has {expected_tokens}",
              flush=True)
    print(f"[bench] {tag}: {result['tokens_per_s']:.0f} tokens/s, peak RSS "
          f"{result['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    if evaluate:
        eval_spec = {"model_path": work.model_path, "val_file": work.val_file, "adapter_dir": result["adapter_dir"],
                     "model_dir": result["model_dir"], "max_seq_len": work.max_seq_len}
        evaluation = run_job("eval", eval_spec, work_dir, f"{tag}-eval", timeout_s)
        result["val_loss"] = evaluation["val_loss"]
        result["val_tokens"] = evaluation["val_tokens"]
        print(f"[bench] {tag}: val loss {result['val_loss']:.4f}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    from bench import report

    args = parse_args(argv)
    if args.render:
        supplements = [json.loads(Path(p).read_text()) for p in args.supplement]
        command = "python -m bench.run " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
        facts = json.loads(Path(args.facts).read_text()) if args.facts else None
        levers = [json.loads(Path(p).read_text()) for p in args.levers]
        text = report.render_markdown(json.loads(Path(args.render).read_text()), supplements, command, facts, levers)
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"[bench] wrote {args.output}")
        return 0
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="tunery-bench-")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    # Other tasks running now (/proc/stat): the 1-minute load average still counts work that ended a minute ago.
    session = {"started": time.time(), "load_start": os.getloadavg(), "busy_start": host.busy_cores(),
               "argv": argv, "peaks": [],
               "code_start": code_version(),
               "runs": {"tunery-lora": [], **{name: [] for name, _ in baseline_rows(args.baseline_precision)}},
               "failures": {}}
    session["prepared"] = prepare(args, work_dir)
    work, train_stats = session["prepared"][0], session["prepared"][1]
    print(f"[bench] work dir {work_dir}; {train_stats.examples} train examples, {train_stats.tokens} tokens "
          f"({train_stats.trained_tokens} trained)", flush=True)

    def train(side: str, name: str, row_work, tag: str, evaluate: bool) -> None:
        result = train_and_eval(side, row_work, work_dir, tag, evaluate=evaluate, timeout_s=args.job_timeout_s,
                                expected_tokens=train_stats.tokens)
        session["runs"].setdefault(name, []).append(result)
        save_results(args, session, work_dir, final=False)  # a stopped bench still leaves what it measured

    peak_spec = {"dtypes": ["bf16", "fp32"], "tokens": [256, 1024],  # tunery's CPU pieces (256 until 2026-12-04)
                 "linear_shapes": session["prepared"][3].linear_shapes,
                 "threads": args.threads}  # the peaks the runs can reach: at their threads
    session["peaks"].append(run_job("peak", peak_spec, work_dir, "peak-0", args.job_timeout_s))
    session["baseline_skipped"] = slow_bf16_baseline(args.baseline_precision, session["peaks"][0])
    for name, why in session["baseline_skipped"].items():
        print(f"[bench] {name} not run: {why}", flush=True)
    sides = [("tunery", "tunery-lora", work)] + ([] if args.no_baseline else [
        ("trl", name, replace(work, precision=precision)) for name, precision in baseline_rows(args.baseline_precision)
        if name not in session["baseline_skipped"]])
    for rep in range(args.repetitions):
        seed = args.seed + rep if args.vary_seed else args.seed
        for side, name, side_work in (sides if rep % 2 == 0 else sides[::-1]):
            train(side, name, replace(side_work, seed=seed), f"{name}-{rep}",
                  evaluate=not args.throughput_only and (args.eval_all or args.vary_seed or rep == 0))
    for name, row_work in extra_rows(args, work):
        try:
            train("tunery", name, row_work, f"{name}-0", evaluate=not args.throughput_only)
        except RuntimeError as exc:  # a failed extra row is reported, not fatal to the comparison
            session["failures"][name] = str(exc).splitlines()[-1][:300]
            print(f"[bench] {name} failed: {session['failures'][name]}", flush=True)
    if args.profile_steps > 0 and not args.throughput_only:
        try:
            session["profile"] = run_job("profile", {"workload": asdict(work), "output_dir": str(work_dir / "runs" / "profile"),
                                                     "skip": PROFILE_WARMUP_STEPS, "steps": args.profile_steps},
                                         work_dir, "profile", args.job_timeout_s)
        except RuntimeError as exc:  # a failed profile is reported, not fatal to the comparison
            session["failures"]["profile"] = str(exc).splitlines()[-1][:300]
    session["peaks"].append(run_job("peak", peak_spec, work_dir, "peak-1", args.job_timeout_s))
    data = save_results(args, session, work_dir, final=True)
    print(report.render_summary(data), flush=True)
    print(f"[bench] wrote {args.output} and {work_dir / 'results.json'}", flush=True)
    return 0


# With `--baseline-precision both`, TRL's bf16 autocast row is left out where this CPU's bf16 GEMMs at the
# model's shapes run below this fraction of its fp32 ones: torch emulates bf16 on a CPU without bf16 units
# (0.11x fp32 on an AMD EPYC with AVX2 only, where TRL's bf16 autocast ran 16x slower than its fp32 and a
# 100-step run would take hours), so that row could not be TRL's faster precision. A margin below 1:
# autocast only casts the GEMMs' inputs, and near 1 the bf16 row might still win on memory traffic.
SLOW_BF16_FRACTION = 0.75
PROFILE_WARMUP_STEPS = 3  # steps before the profiled ones: first-step allocations and kernel builds


def slow_bf16_baseline(precision: str, peak: dict) -> dict[str, str]:
    """{row name: why} for a baseline row not worth running on this CPU (see SLOW_BF16_FRACTION)."""
    bf16, fp32 = peak.get("linear_bf16"), peak.get("linear_fp32")
    if precision != "both" or not bf16 or not fp32 or not fp32.get("flops_per_s"):
        return {}
    ratio = bf16["flops_per_s"] / fp32["flops_per_s"]
    if ratio >= SLOW_BF16_FRACTION:
        return {}
    return {"trl-lora-bf16": (
        f"bf16 `F.linear` at the model's shapes measured {ratio:.2f}x fp32 on this CPU "
        f"({bf16['flops_per_s'] / 1e9:.0f} against {fp32['flops_per_s'] / 1e9:.0f} GFLOP/s), so TRL's bf16 "
        "autocast cannot be its faster precision here and TRL runs in fp32 only; "
        "`--baseline-precision bf16` runs it anyway")}


def baseline_rows(precision: str) -> list[tuple[str, str]]:
    """(row name, TRL precision) of the baseline runs: both precisions, the faster one counting, or one."""
    if precision == "both":
        return [("trl-lora-bf16", "bf16"), ("trl-lora-fp32", "fp32")]
    return [("trl-lora", precision)]


def code_version() -> str:
    """The repository commit, with `+dirty` when tunery/ has uncommitted changes (others edit it live)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tunery"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def extra_rows(args, work) -> list[tuple[str, object]]:
    """tunery-only rows: LoRA with extra overrides, then the other methods."""
    rows = []
    if args.extra_tunery:
        extra = dict(item.split("=", 1) for item in args.extra_tunery)
        rows.append(("tunery-lora-extra", type(work)(**{**asdict(work), "extra": {"tunery_overrides": extra}})))
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        rows.append((f"tunery-{method}", type(work)(**{**asdict(work), "method": method})))
    return rows


def save_results(args, session: dict, work_dir: Path, *, final: bool) -> dict:
    """Assemble everything measured so far into results.json (and the markdown report when final)."""
    from bench import report
    from bench.flops import training_flops
    from bench.side_tunery import tunery_overrides

    work, train_stats, val_stats, shape, sources = session["prepared"]
    for name, results in session["runs"].items():
        for r in results:
            r["model_flops"] = training_flops(shape, method=name.split("-")[1], rank=work.rank, tokens=r["tokens"],
                                              trained_tokens=r["trained_tokens"], context_sum=train_stats.context_sum)
    argv = session["argv"] if session["argv"] is not None else sys.argv[1:]
    data = {
        "complete": final, "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(session["started"])),
        "duration_s": round(time.time() - session["started"]), "machine": report.machine_info(),
        "command": "python -m bench.run " + " ".join(shlex.quote(a) for a in argv),
        "quick": args.quick, "workload": asdict(work), "baseline_precision": args.baseline_precision,
        "vary_seed": args.vary_seed, "repetitions": args.repetitions,
        "sources": sources, "train_stats": train_stats.to_dict(), "val_stats": val_stats.to_dict(),
        "model_shape": {"decoder_linear_params": shape.decoder_linear_params,
                        "lora_params": shape.lora_params(work.rank), "layers": shape.num_layers,
                        "vocab_size": shape.vocab_size, "hidden_size": shape.hidden_size},
        "peaks": session["peaks"], "runs": session["runs"], "failures": session["failures"],
        "baseline_skipped": session.get("baseline_skipped", {}), "profile": session.get("profile"),
        "load_avg": {"start": session["load_start"], "end": os.getloadavg()}, "extra_tunery": args.extra_tunery,
        "busy_cores": {"start": session["busy_start"], "end": host.busy_cores()},
        "code": {"start": session["code_start"], "end": code_version()},
        "tunery_command": "tunery train empty.yaml " + " ".join(shlex.quote(o) for o in tunery_overrides(work, Path("RUN_DIR"))),
    }
    (work_dir / "results.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
    if final:
        if args.results_json:
            Path(args.results_json).write_text(json.dumps(data, indent=2), encoding="utf-8")
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(report.render_markdown(data), encoding="utf-8")
    return data


if __name__ == "__main__":
    sys.exit(main())
