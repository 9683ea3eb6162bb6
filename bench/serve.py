"""Serving benchmark: the tunery engine against Hugging Face `generate`, same model, same prompts, same run.

Reports single-stream decode tokens/s, total tokens/s with 8 concurrent clients, and time to
first token, each as a ratio against `generate`; with `--quantized int4|int8` (default int4) also
a second engine on quantized weights, its speed against the same `generate` and its drift from the
full-precision model's greedy tokens; with `--tasks`, task scores of full and quantized weights through
the engine. Rewrites its part of docs/benchmarks-serving.md (above KEPT_MARKER) and keeps the
sections below it (bench.anchor's llama.cpp rows, hand-written measurements).
Run: `python -m bench.serve [--model REF] [--dtype fp32] [--quantized int4] [--max-new-tokens N] [--repetitions R]`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import torch

from tunery.inference.lane_backend import MAX_DRAFT as FAST_MAX_DRAFT
from tunery.inference.torch_backend import MAX_DRAFT as SPEC_MAX_DRAFT

REPO = Path(__file__).resolve().parent.parent
# Everything above this line of the report is rewritten by every run; everything below it is kept.
KEPT_MARKER = "<!-- bench.serve writes the part above this line; sections below it are kept as they are -->"
QUESTIONS = [
    "My laptop will not connect to the office Wi-Fi since this morning. What should I try?",
    "How do I reset my VPN token?",
    "Outlook keeps crashing when I open a shared calendar. Any fix?",
    "Write a short polite reply telling a user their ticket was escalated to the network team.",
    "What is the difference between a hub and a switch?",
    "Explain in two sentences what DNS does.",
    "The printer on floor three shows 'offline'. List three things to check.",
    "Summarise: the database backup failed twice last night because the disk was full.",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct", help="Model reference to serve.")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"], help="Weights precision (both sides).")
    p.add_argument("--quantized", default="int4", choices=["none", "int8", "int4"],
                   help="Also run an engine with these weights (tunery serve --weights); none skips it.")
    p.add_argument("--max-new-tokens", type=int, default=64, help="Tokens generated per request (EOS ignored).")
    p.add_argument("--clients", type=int, default=8, help="Concurrent clients in the batched measurement.")
    p.add_argument("--repetitions", type=int, default=3, help="Alternating repetitions; medians are reported.")
    p.add_argument("--llama-cpp", default="auto", help="GGUF file for the llama.cpp rows (llama-cpp-python); auto: "
                   "the built-in model's own GGUF when the package is installed; none skips them.")
    p.add_argument("--tasks", default=str(REPO / "examples" / "helpdesk" / "test.jsonl"),
                   help="Task file scored with full and --quantized weights through the engine; none skips it.")
    p.add_argument("--output", default=str(REPO / "docs" / "benchmarks-serving.md"), help="Markdown report path.")
    return p.parse_args(argv)


def hf_single(model, prompts, max_new_tokens, outputs: list | None = None, **generate_kwargs) -> tuple[float, int, float]:
    """Sequential `generate` calls: (seconds, tokens, median time to first token); token ids into `outputs`."""
    tokens, ttfts, start = 0, [], time.perf_counter()
    for ids in prompts:
        t0 = time.perf_counter()
        model.generate(torch.tensor([ids], device=model.device), max_new_tokens=1, min_new_tokens=1, do_sample=False)
        ttfts.append(time.perf_counter() - t0)
    start = time.perf_counter()
    for ids in prompts:
        out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                             do_sample=False, **generate_kwargs)
        tokens += out.shape[1] - len(ids)
        if outputs is not None:
            outputs.append(out[0].tolist())
    return time.perf_counter() - start, tokens, statistics.median(ttfts)


def hf_batched(model, tokenizer, prompts, max_new_tokens) -> tuple[float, int]:
    """One left-padded `generate` over all prompts at once (the best case for a static batch)."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    start = time.perf_counter()
    out = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad)
    return time.perf_counter() - start, (out.shape[1] - width) * len(prompts)


def engine_run(engine, prompts, max_new_tokens, texts: list | None = None,
               adapters: list[str | None] | None = None) -> tuple[float, int, list[float]]:
    """All prompts submitted at once (concurrent clients): (seconds, tokens, time to first token each).

    The completions' texts go into `texts`, in prompt order, when given; prompt i runs on the loaded
    adapter `adapters[i]` when given (None: the base model)."""
    from tunery.inference import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, ignore_eos=True)
    done, lock = threading.Event(), threading.Lock()
    state = {"left": len(prompts), "tokens": 0}
    first: list[float | None] = [None] * len(prompts)
    pieces: list[list[str]] = [[] for _ in prompts]
    start = time.perf_counter()

    def sink(i):
        def on_event(event):
            if first[i] is None:
                first[i] = time.perf_counter() - start
            pieces[i].append(event.text)
            if event.finish_reason:
                with lock:
                    state["tokens"] += event.completion_tokens
                    state["left"] -= 1
                    if state["left"] == 0:
                        done.set()
        return on_event

    for i, ids in enumerate(prompts):
        engine.submit(ids, params, sink(i), adapters[i] if adapters else None)
    done.wait()
    seconds = time.perf_counter() - start
    if texts is not None:
        texts.extend("".join(p) for p in pieces)
    return seconds, state["tokens"], [f for f in first if f is not None]


def engine_single(engine, prompts, max_new_tokens, texts: list | None = None, *, speculate: bool = True,
                  passes: list | None = None) -> tuple[float, int, float]:
    """One request at a time; `speculate=False` turns the engine's prompt-lookup speculation off.

    (tokens, decode passes) go into `passes`, for the tokens each pass produced."""
    seconds, tokens, ttfts = 0.0, 0, []
    previous, before = engine.speculate, engine.stats["decode_passes"]
    engine.speculate = speculate
    try:
        for ids in prompts:
            s, t, first = engine_run(engine, [ids], max_new_tokens, texts)
            seconds, tokens = seconds + s, tokens + t
            ttfts.extend(first)
    finally:
        engine.speculate = previous
    if passes is not None:
        # The first token of each request comes from its prefill, not a decode pass.
        passes.append((tokens - len(prompts), engine.stats["decode_passes"] - before))
    return seconds, tokens, statistics.median(ttfts)


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    from tunery.data.template import encode_prompt
    from tunery.inference.loaded_engine import load_engine

    loaded = load_engine(args.model, dtype=args.dtype, max_batch_size=max(args.clients, 1))
    engine, tokenizer, model = loaded.engine.start(), loaded.tokenizer, loaded.engine.model
    questions = (QUESTIONS * ((args.clients + len(QUESTIONS) - 1) // len(QUESTIONS)))[: args.clients]
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    engine_run(engine, prompts[:2], 4)  # warm-up both paths
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]], device=model.device), max_new_tokens=4, do_sample=False)
    quant = None
    if args.quantized != "none":
        quant = load_engine(args.model, dtype=args.dtype, weights=args.quantized,
                            max_batch_size=max(args.clients, 1))
        print(quant.quantization.summary(), flush=True)
        quant.engine.start()
        engine_run(quant.engine, prompts[:2], 4)
    llama, args.llama_status = open_llama_cpp(args)
    keys = ["hf1", "hf1_lookup", "hf_batch", "eng1", "eng1_plain", "eng8", "hf_ttft", "eng_ttft", "eng8_ttft"]
    rows = {k: [] for k in keys + (["q1", "q1_plain", "q8", "q_ttft"] if quant else [])
            + (["ll1", "ll_ttft", "ll8", "ll8_ttft"] if llama else [])}
    passes: dict[str, list] = {"full": [], "quant": []}
    references: list[list[int]] = []  # the full-precision model's greedy tokens, for the drift
    texts = {"full": [], "quant": []}
    for rep in range(args.repetitions):
        with torch.inference_mode():
            s, t, ttft = hf_single(model, prompts, args.max_new_tokens, references if rep == 0 else None)
            rows["hf1"].append(t / s)
            rows["hf_ttft"].append(ttft * 1000)
            s, t, _ = hf_single(model, prompts, args.max_new_tokens, prompt_lookup_num_tokens=SPEC_MAX_DRAFT)
            rows["hf1_lookup"].append(t / s)
            s, t = hf_batched(model, tokenizer, prompts, args.max_new_tokens)
            rows["hf_batch"].append(t / s)
        s, t, ttft = engine_single(engine, prompts, args.max_new_tokens, texts["full"] if rep == 0 else None,
                                   passes=passes["full"])
        rows["eng1"].append(t / s)
        rows["eng_ttft"].append(ttft * 1000)
        s, t, _ = engine_single(engine, prompts, args.max_new_tokens, speculate=False)
        rows["eng1_plain"].append(t / s)
        if quant:
            s, t, ttft = engine_single(quant.engine, prompts, args.max_new_tokens, texts["quant"] if rep == 0 else None,
                                       passes=passes["quant"])
            rows["q1"].append(t / s)
            rows["q_ttft"].append(ttft * 1000)
            s, t, _ = engine_single(quant.engine, prompts, args.max_new_tokens, speculate=False)
            rows["q1_plain"].append(t / s)
            s, t, _ = engine_run(quant.engine, prompts, args.max_new_tokens)
            rows["q8"].append(t / s)
        if llama:
            tokens_per_s, ttft = llama.single(prompts, args.max_new_tokens, texts.setdefault("llama", [])
                                              if rep == 0 else None)
            rows["ll1"].append(tokens_per_s)
            rows["ll_ttft"].append(ttft)
            tokens_per_s, ttft = llama.clients(prompts, args.max_new_tokens)
            rows["ll8"].append(tokens_per_s)
            rows["ll8_ttft"].append(ttft)
        s, t, ttfts = engine_run(engine, prompts, args.max_new_tokens)
        rows["eng8"].append(t / s)
        rows["eng8_ttft"].append(statistics.median(ttfts) * 1000)
        print(f"repetition {rep + 1}: " + ", ".join(f"{k}={v[-1]:.3f}" for k, v in rows.items()), flush=True)
    engine.stop()
    drift = None
    if quant:
        quant.engine.stop()
        drift = measure_drift(quant.engine, references, prompts, texts)
        drift["summary"] = quant.quantization.summary()
        drift["decode"] = quant.decode_summary
        drift["passes"] = lane_pass_times(quant.engine, prompts[0]) if quant.engine.backend.name == "lane" else {}
    if llama:
        args.llama_identical = sum(ref[len(ids):] == new for ids, ref, new in zip(prompts, references, texts["llama"],
                                                                                   strict=True))
    if quant and args.tasks != "none":
        drift["tasks"] = task_scores(args)
    med = {k: statistics.median(v) for k, v in rows.items()}
    spread = {k: (min(v), max(v)) for k, v in rows.items()}
    args.load = (load_before, os.getloadavg()[0])
    per_pass = {k: sum(t for t, _ in v) / max(1, sum(p for _, p in v)) for k, v in passes.items() if v}
    write_report(Path(args.output), args, med, spread, str(next(model.parameters()).dtype), drift, per_pass)


def task_scores(args) -> dict:
    """Mean task scores of full and quantized weights, each generated through the serving engine."""
    from tunery.evaluation.evaluate import evaluate_model

    return {weights: evaluate_model(args.model, args.tasks, dtype=args.dtype, weights=weights, max_new_tokens=128,
                                    batch_size=8).metric_means() for weights in ("full", args.quantized)}


def open_llama_cpp(args):
    """(a LlamaCpp or None, the line the report prints about it)."""
    from bench.llamacpp import LlamaCpp, default_gguf, llama_cpp_status
    from tunery.errors import ModelError

    if args.llama_cpp == "none":
        return None, "llama.cpp rows left out (--llama-cpp none)"
    try:
        gguf = default_gguf(args.model) if args.llama_cpp == "auto" else args.llama_cpp
    except (KeyError, ModelError):
        return None, "llama.cpp rows left out: --model is not a built-in model; pass --llama-cpp FILE.gguf"
    module, status = llama_cpp_status(gguf)
    return (LlamaCpp(module, gguf, torch.get_num_threads()) if module else None), status


def measure_drift(engine, references, prompts, texts) -> dict:
    """How often the quantized engine's top token is the full-precision greedy token, teacher-forced
    along the full-precision generations (through the fast lane when the engine decodes there, as it
    served them); and how many whole completions came out identical."""
    agree = total = 0
    with torch.inference_mode():
        for ids, full in zip(prompts, references, strict=True):
            top = top_tokens(engine, ids, full[len(ids):])
            agree += int((top == torch.tensor(full[len(ids):])).sum())
            total += len(full) - len(ids)
    identical = sum(a == b for a, b in zip(texts["full"], texts["quant"], strict=True))
    return {"agree": agree, "total": total, "identical": identical, "completions": len(texts["full"])}


def lane_pass_times(engine, ids: list[int], repeats: int = 20) -> dict[int, float]:
    """Median ms of one fast-lane pass with 1, 2, 4, 8 and 16 rows (sequences at the prompt's length)."""
    from transformers import DynamicCache

    from tunery.inference.batch import cache_tensors

    model, lane = engine.model, engine.backend.lane
    cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids], device=model.device), cache=cache, use_cache=True)
    times = {}
    for rows in (1, 2, 4, 8, 16):
        keys = [-1 - i for i in range(rows)]
        for key in keys:
            lane.load(key, cache_tensors(cache), len(ids), capacity=len(ids) + repeats + 1)
        samples = []
        for step in range(repeats):
            start = time.perf_counter()
            lane.forward(keys, [100] * rows, [len(ids) + step] * rows, [0] * rows, threads=torch.get_num_threads())
            samples.append((time.perf_counter() - start) * 1000)
        for key in keys:
            lane.drop(key)
        times[rows] = statistics.median(samples)
    return times


def top_tokens(engine, ids: list[int], continuation: list[int]) -> torch.Tensor:
    """The engine's argmax after the prompt and after each continuation token but the last, through
    its backend as it serves: the prompt's prefill, then steps of up to 16 tokens."""
    from tunery.inference.backend import Prompt, Row

    backend, key = engine.backend, -1  # not an engine request id
    picks = backend.prefill([Prompt(key, ids, 0, len(ids) + len(continuation) + 1)])[0].argmax(-1).view(1).tolist()
    feed = continuation[:-1]
    try:
        for start in range(0, len(feed), 16):
            chunk = feed[start:start + 16]
            picks += backend.step([Row(key, chunk, len(ids) + start, 0, logits=len(chunk))]).argmax(-1).tolist()
    finally:
        backend.free([key])
    return torch.tensor(picks)


def write_report(path: Path, args, med, spread, dtype: str, drift: dict | None = None,
                 per_pass: dict | None = None) -> None:
    def cell(key, fmt="{:.1f}"):
        lo, hi = spread[key]
        return f"{fmt.format(med[key])} ({fmt.format(lo)}–{fmt.format(hi)})"

    single_ratio = med["eng1"] / med["hf1"]
    concurrent_ratio = med["eng8"] / med["eng1"]
    lines = [
        "# Serving benchmark",
        "",
        "Written by `python -m bench.serve`; every number comes from one run on this machine, tunery's engine",
        "and Hugging Face `generate` alternating on the same model object, the same prompts and the same",
        "number of generated tokens (greedy, EOS ignored). Medians over repetitions, min–max in brackets.",
        "",
        f"- model: `{args.model}`, weights {dtype}; {args.max_new_tokens} new tokens per request; "
        f"{args.clients} clients; {args.repetitions} repetitions",
        f"- machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs; 1-minute load average {args.load[0]:.1f} at the start "
        f"and {args.load[1]:.1f} at the end (other work on the machine slows both sides alike)"
        + (": the machine was busy, so the absolute figures are contended; read the ratios, measured side by side"
           if max(args.load) > (os.cpu_count() or 1) else ""),
        "",
        "| measurement | HF generate | tunery engine | ratio |",
        "|---|---|---|---|",
        f"| single stream, decode tokens/s | {cell('hf1')} | {cell('eng1')} | **{single_ratio:.2f}x** (target ≥ 5x) |",
        f"| single stream, speculation off (one token per pass) | {cell('hf1')} | {cell('eng1_plain')} | "
        f"{med['eng1_plain'] / med['hf1']:.2f}x |",
        f"| single stream, generate with prompt lookup (`prompt_lookup_num_tokens={SPEC_MAX_DRAFT}`) | "
        f"{cell('hf1_lookup')} | {cell('eng1')} | {med['eng1'] / med['hf1_lookup']:.2f}x |",
        f"| tokens per decode pass, single stream (prompt-lookup speculation) | | "
        f"{(per_pass or {}).get('full', 1.0):.2f} | |",
        f"| {args.clients} clients, total tokens/s | {cell('hf1')} one by one; {cell('hf_batch')} as one padded "
        f"batch | {cell('eng8')} | **{med['eng8'] / med['hf1']:.2f}x** vs generate one by one, "
        f"{med['eng8'] / med['hf_batch']:.2f}x vs padded batch |",
        f"| {args.clients} clients vs single stream (tunery) | | | **{concurrent_ratio:.2f}x** (target ≥ 3x) |",
        f"| time to first token, one client, ms | {cell('hf_ttft')} | {cell('eng_ttft')} | "
        f"{med['hf_ttft'] / med['eng_ttft']:.2f}x (generate's time / the engine's) |",
        f"| time to first token, {args.clients} clients arriving at once, ms (median) | | {cell('eng8_ttft')} | |",
        "",
    ]
    if drift:
        q = args.quantized
        lines += [
            f"With quantized weights (`tunery serve --weights {q}`): a second engine loaded from the same model,",
            "measured in the same repetitions against the same `generate` runs (full-precision weights, "
            f"{dtype}).",
            "",
            "| measurement | HF generate | tunery engine, " + q + " | ratio |",
            "|---|---|---|---|",
            f"| single stream, decode tokens/s | {cell('hf1')} | {cell('q1')} | **{med['q1'] / med['hf1']:.2f}x** "
            "(target ≥ 5x) |",
            f"| single stream, speculation off | {cell('hf1')} | {cell('q1_plain')} | "
            f"{med['q1_plain'] / med['hf1']:.2f}x |",
            f"| tokens per decode pass, single stream | | {(per_pass or {}).get('quant', 1.0):.2f} | |",
            f"| {args.clients} clients, total tokens/s | {cell('hf1')} one by one; {cell('hf_batch')} as one padded "
            f"batch | {cell('q8')} | **{med['q8'] / med['hf1']:.2f}x** vs generate one by one, "
            f"{med['q8'] / med['hf_batch']:.2f}x vs padded batch |",
            f"| {args.clients} clients vs single stream (tunery, {q}) | | | {med['q8'] / med['q1']:.2f}x |",
            f"| time to first token, one client, ms | {cell('hf_ttft')} | {cell('q_ttft')} | "
            f"{med['hf_ttft'] / med['q_ttft']:.2f}x |",
            f"| drift: top token = full-precision greedy token (teacher-forced along its {args.clients} "
            f"generations) | | {drift['agree']} of {drift['total']} | **{drift['agree'] / drift['total']:.1%}** |",
            f"| drift: whole greedy completions identical to the full-precision engine's | | "
            f"{drift['identical']} of {drift['completions']} | |",
            "",
            f"- {drift['summary']}",
            f"- {drift['decode']}",
            "",
        ]
        if drift.get("tasks"):
            full, quantized = drift["tasks"]["full"], drift["tasks"][q]
            names = [name for name in full if not name.startswith("json_field.") and name in quantized]
            lines += [
                f"Task scores on `{Path(args.tasks).name}` ({', '.join(names)}), greedy through the engine, at most 128",
                "new tokens (`tunery eval MODEL --tasks FILE --weights W`):",
                "",
                "| weights | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names),
                "| full | " + " | ".join(f"{full[n]:.3f}" for n in names) + " |",
                f"| {q} | " + " | ".join(f"{quantized[n]:.3f}" for n in names) + " |",
                "",
            ]
        if drift.get("passes"):
            one = drift["passes"][1]
            lines += [
                "One fast-lane pass, measured in this run (ms, median of 20; rows are requests decoded together):",
                "",
                "| rows | " + " | ".join(str(rows) for rows in drift["passes"]) + " |",
                "|---|" + "---|" * len(drift["passes"]),
                "| ms per pass | " + " | ".join(f"{ms:.1f}" for ms in drift["passes"].values()) + " |",
                "| tokens/s | " + " | ".join(f"{rows * 1000 / ms:.0f}" for rows, ms in drift["passes"].items()) + " |",
                "| vs one row | " + " | ".join(f"{rows * one / ms:.2f}x" for rows, ms in drift["passes"].items()) + " |",
                "",
            ]
    lines += llama_cpp_lines(args, med, cell)
    lines += [
        "Speculation: a lone greedy request drafts tokens by prompt lookup (what followed the latest earlier",
        "occurrence of its last 3 or 2 tokens, in the prompt or its own output) and one pass scores them all;",
        "the engine keeps the prefix greedy decoding would have produced plus the model's next token, so the",
        f"text is the same as without it. Through the torch model (up to {SPEC_MAX_DRAFT} draft tokens) a batch-1",
        "pass costs about the same for one token as for seven here, so accepted draft tokens are nearly free;",
        "in the fast lane each extra token costs a share of a pass (table above), so a draft there starts at one",
        f"token and grows by one (up to {FAST_MAX_DRAFT}) while drafts are accepted whole. It pays when much of",
        "the answer repeats its prompt or itself (extraction, JSON with copied fields, code edits); these",
        "prompts are free prose, where few drafts match.",
        "",
        "Why full-precision weights do not get 5x on one stream: a batch-1 decode step reads every weight once",
        "(fp32: 540 MB per token), and on this CPU the weight matmuls take most of the step on both sides",
        "(about 86%, torch profiler, one token); the engine can only save the rest (sampling, stopping checks,",
        "cache bookkeeping, prefill of only the last position's logits). Batching gains because one pass over",
        "the weights serves every row.",
        "",
        "Int4 weights shrink what a step reads to about a seventh (int4 decoder, int8 head), but through the",
        "torch model a step stays a few hundred small operations per token (an int4 decode step took ~18 ms on",
        "one thread, ~8 ms of it the int4 products). The fast lane runs the step as one compiled call over the",
        "same tensors (docs/serving.md#the-fast-lane): integer dot products of int4 weights with activations",
        "quantized to two int8 codes per value, the output rows of each matrix split over the threads, every",
        "running request in the same pass. What is left is mostly reading the weights (~99 MB per pass: int4",
        "codes 53 MB, their fp16 scales and minimums 13 MB, the int8 head 28 MB and its group scales 3.5 MB)",
        "and multiplying them. A prompt that arrives alone is prefilled in the lane too, 16 positions a pass,",
        "hence the shorter time to first token.",
        "Drift: the default model's decoder was stored as Q4_1 (group 32, scale + min) in its GGUF and its",
        "head (tied to the embedding) as Q8_0, so int4 reproduces both bit for bit; what is left is the",
        "lane's rounding of activations (two int8 codes per value, about 15 bits) and fp16 keys and values.",
        "Greedy completions that differ part at near ties and then follow their own, equally fluent, path.",
        "",
        "The padded-batch column is Hugging Face's best case for a fixed batch that starts and ends together;",
        "a server meets requests that arrive and finish at different times, which the engine's step-level",
        "batching handles and a static batch does not.",
        "",
    ]
    text = "\n".join(lines) + f"\n{KEPT_MARKER}\n" + kept_sections(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print("\n".join(lines))


def kept_sections(path: Path) -> str:
    """What the report holds past this script's part: sections written by hand or by other benchmarks
    (bench.anchor's llama.cpp rows, the int4 agreement history), kept as they are. A report from before
    the marker keeps everything from its first `## ` heading (this script writes none)."""
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8")
    if KEPT_MARKER in text:
        return text.split(KEPT_MARKER, 1)[1].lstrip("\n")
    at = text.find("\n## ")
    return text[at + 1:] if at >= 0 else ""


def llama_cpp_lines(args, med, cell) -> list[str]:
    """The llama.cpp table: tunery's engines against llama.cpp on the same prompts, in the same run."""
    if "ll1" not in med:
        return [f"- {args.llama_status}", ""]
    q = "q1" in med

    def lane(key: str, other: str) -> str:
        return f"**{med[key] / med[other]:.2f}x**" if key in med else "-"

    return [
        f"Against llama.cpp: {args.llama_status}, greedy, the same prompt token ids and the same number of new",
        f"tokens, measured in the same repetitions. llama-cpp-python answers one request at a time, so its {args.clients}",
        "clients are served one after another (llama.cpp's own server batches parallel slots, but not requests",
        "on different LoRA adapters, which tunery's engine does).",
        "",
        f"| measurement | llama.cpp | tunery, {args.quantized} | tunery, full | {args.quantized} / llama.cpp |",
        "|---|---|---|---|---|",
        f"| single stream, decode tokens/s | {cell('ll1')} | {cell('q1') if q else '-'} | {cell('eng1')} | "
        f"{lane('q1', 'll1')} |",
        f"| {args.clients} clients, total tokens/s | {cell('ll8')} | {cell('q8') if q else '-'} | {cell('eng8')} | "
        f"{lane('q8', 'll8')} |",
        f"| time to first token, one client, ms | {cell('ll_ttft')} | {cell('q_ttft') if q else '-'} | "
        f"{cell('eng_ttft')} | {med['ll_ttft'] / med['q_ttft']:.2f}x (llama.cpp's time / tunery's) |"
        if q else f"| time to first token, one client, ms | {cell('ll_ttft')} | - | {cell('eng_ttft')} | - |",
        f"| time to first token, {args.clients} clients arriving at once, ms (median) | {cell('ll8_ttft')} | | "
        f"{cell('eng8_ttft')} | |",
        f"| greedy completions identical to full precision's | {args.llama_identical} of {args.clients} | | | |",
        "",
    ]


if __name__ == "__main__":
    main()
