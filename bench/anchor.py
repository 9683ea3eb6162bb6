"""tunery's fast lane against llama.cpp: one stream (decode tokens/s and prompt tokens/s), and clients
that arrive together, each on its own LoRA adapter (total tokens/s, time to first token). Same model,
same prompt token ids, same thread count, the two sides alternating within every repetition.

llama.cpp runs in its own Python (`--llama-python`, an environment with llama-cpp-python, e.g.
`make .venv-ecosystem/.installed`) as a child process per repetition, on the model's GGUF (the
built-in model's own: Q4_1 decoder, Q8_0 embedding). tunery serves `--weights int4` through the lane.
Decode: greedy, exactly `--new-tokens` tokens after each prompt, EOS ignored; tokens/s counts the
tokens after the first over the time after the first. Prompt: a long prompt's tokens over the time
to its first token. Medians over repetitions; the load average is printed with each (on a shared
machine both sides are slowed, which is why they alternate). Prints one JSON line per side and
repetition, then Markdown tables.
Clients: `--clients` seeded random rank-8 LoRA adapters on every decoder projection (`bench/adapters.py`),
written as PEFT folders for tunery and as GGUF LoRA files for llama.cpp; the requests (the serving
benchmark's prompts) are submitted together, request i on adapter i. tunery's engine batches them
whatever their adapters. llama-cpp-python serves one sequence at a time and its server takes one
adapter per model, not per request, so its side answers them one after another in one process, the
adapter switched per request (`llama_set_adapters_lora`), as a user of llama-cpp-python would; the
time to first token counts the wait for the requests before. CPU seconds of each side's process
are reported beside the wall time.
Run: `python -m bench.anchor --llama-python .venv-ecosystem/bin/python [--threads 2] [--repetitions 5]
[--clients 8]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.serve import QUESTIONS, engine_run


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.anchor", description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct", help="Built-in model (its GGUF is llama.cpp's side).")
    p.add_argument("--gguf", default="auto", help="GGUF for llama.cpp; auto: the built-in model's own file.")
    p.add_argument("--llama-python", required=True, help="Python with llama-cpp-python installed.")
    p.add_argument("--threads", type=int, default=2, help="Threads for both sides.")
    p.add_argument("--new-tokens", type=int, default=64, help="Tokens generated per prompt (EOS ignored).")
    p.add_argument("--prompts", type=int, default=4, help="How many of the serving benchmark's prompts decode.")
    p.add_argument("--repetitions", type=int, default=5, help="Alternating repetitions; medians are reported.")
    p.add_argument("--clients", type=int, default=8, choices=range(0, 9), metavar="0-8",
                   help="Requests arriving together, each on its own LoRA adapter (0: single stream only).")
    p.add_argument("--adapter-rank", type=int, default=8, help="Rank of the clients' random LoRA adapters.")
    return p.parse_args(argv)


def long_prompt(tokenizer) -> list[int]:
    """A prompt of a few hundred tokens: the helpdesk system prompt and a long ticket."""
    from tunery.data.template import encode_prompt

    test = Path(__file__).resolve().parent.parent / "examples" / "helpdesk" / "test.jsonl"
    lines = [json.loads(line)["messages"] for line in test.read_text().splitlines()[:6]]
    ticket = "\n\n".join(m["content"] for messages in lines for m in messages if m["role"] == "user")
    return encode_prompt(tokenizer, [lines[0][0], {"role": "user", "content": ticket}])


def tunery_side(engine, prompts, long_ids, new_tokens, clients=(), adapter_names=()) -> dict:
    """Decode and prompt tokens/s of the engine, one request at a time, speculation off; then the
    clients together, client i on adapter i."""
    engine.speculate = False
    decode_s = decode_tokens = 0.0
    for ids in prompts:
        seconds, tokens, first = engine_run(engine, [ids], new_tokens)
        decode_s, decode_tokens = decode_s + seconds - first[0], decode_tokens + tokens - 1
    _, _, first = engine_run(engine, [long_ids], 1)
    result = {"decode_tokens_per_s": decode_tokens / decode_s, "prompt_tokens_per_s": len(long_ids) / first[0]}
    if clients:
        texts: list[str] = []
        cpu_s = time.process_time()  # every thread of this process: the engine's and the lane's
        seconds, tokens, firsts = engine_run(engine, clients, new_tokens, texts, adapters=list(adapter_names))
        result.update(clients_tokens_per_s=tokens / seconds, clients_ttft_ms=statistics.median(firsts) * 1000,
                      clients_tokens_per_cpu_s=tokens / (time.process_time() - cpu_s), clients_texts=texts)
    return result


LLAMA_CHILD = r"""
import ctypes, json, statistics, sys, time
import llama_cpp
job = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=2048, n_threads=job["threads"], n_threads_batch=job["threads"],
                      n_batch=512, verbose=False)
def run(ids, count):
    start, first, tokens = time.perf_counter(), None, []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        first = first if first is not None else time.perf_counter() - start
        tokens.append(int(token))
        if len(tokens) >= count:
            break
    return first, time.perf_counter() - start, tokens
run(job["prompts"][0], 4)  # warm-up
decode_s = decode_tokens = 0.0
for ids in job["prompts"]:
    first, total, tokens = run(ids, job["new_tokens"])
    decode_s, decode_tokens = decode_s + total - first, decode_tokens + len(tokens) - 1
first, _, _ = run(job["long"], 1)
system = llama_cpp.llama_print_system_info()
result = {"decode_tokens_per_s": decode_tokens / decode_s, "prompt_tokens_per_s": len(job["long"]) / first,
          "build": f"llama-cpp-python {llama_cpp.__version__} ({(system.decode() if isinstance(system, bytes) else system).strip()})"}
if job["clients"]:
    if job["check"]:  # the base model's answers, for the check that the adapters change them
        result["base_tokens"] = [run(ids, job["new_tokens"])[2] for ids in job["clients"]]
    handles = []
    for path in job["adapters"]:
        handle = llama_cpp.llama_adapter_lora_init(llm.model, path.encode("utf-8"))
        if not handle:
            sys.exit(f"llama.cpp could not load the LoRA adapter {path}")
        handles.append(handle)
    def use(handle):
        adapters, scales = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle), (ctypes.c_float * 1)(1.0)
        if llama_cpp.llama_set_adapters_lora(llm.ctx, adapters, 1, scales):
            sys.exit("llama.cpp refused to set a LoRA adapter")
        llm.reset()  # the cache was computed on another adapter: no prefix of it may be reused
    use(handles[0])
    run(job["clients"][0], 4)  # warm-up
    start, cpu_s, firsts, outputs = time.perf_counter(), time.process_time(), [], []
    for ids, handle in zip(job["clients"], handles):  # arrived together, answered one after another
        use(handle)
        began = time.perf_counter() - start
        first, _, tokens = run(ids, job["new_tokens"])
        firsts.append(began + first)
        outputs.append(tokens)
    seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu_s
    count = sum(len(tokens) for tokens in outputs)
    result.update(clients_tokens_per_s=count / seconds, clients_ttft_ms=statistics.median(firsts) * 1000,
                  clients_tokens_per_cpu_s=count / cpu_s, clients_tokens=outputs)
print(json.dumps(result))
"""


def check_llama_python(python: str) -> str:
    """llama-cpp-python's version in `python`, or exit with what to do."""
    try:
        found = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.__version__)"], capture_output=True,
                               text=True, timeout=300)
    except OSError as exc:
        raise SystemExit(f"bench.anchor: --llama-python {python} cannot run ({exc.strerror}); build the ecosystem "
                         "environment with `make .venv-ecosystem/.installed` and pass its python") from None
    if found.returncode != 0:
        raise SystemExit(f"bench.anchor: llama-cpp-python is missing in --llama-python {python} (import llama_cpp "
                         "failed); build the ecosystem environment with `make .venv-ecosystem/.installed` and pass "
                         "its python, or `pip install llama-cpp-python` into that environment")
    return found.stdout.strip()


def llama_side(args, gguf, prompts, long_ids, clients, adapters, check: bool) -> dict:
    job = json.dumps({"gguf": gguf, "threads": args.threads, "prompts": prompts, "long": long_ids,
                      "new_tokens": args.new_tokens, "clients": clients,
                      "adapters": [str(adapter.gguf_path) for adapter in adapters], "check": check})
    result = subprocess.run([args.llama_python, "-c", LLAMA_CHILD], input=job, capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"bench.anchor: llama.cpp's side failed (exit {result.returncode}):\n"
                         f"{result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    check_llama_python(args.llama_python)
    import torch

    from bench.adapters import make_adapters
    from bench.llamacpp import default_gguf
    from tunery.data.template import encode_prompt
    from tunery.inference.loaded_engine import load_engine

    torch.set_num_threads(args.threads)
    gguf = default_gguf(args.model) if args.gguf == "auto" else args.gguf
    loaded = load_engine(args.model, dtype="fp32", weights="int4", max_batch_size=max(1, args.clients),
                         max_adapters=max(1, args.clients))
    engine = loaded.engine.start()

    def encode(questions):
        return [encode_prompt(loaded.tokenizer, [{"role": "user", "content": q}]) for q in questions]

    prompts, clients, long_ids = encode(QUESTIONS[:args.prompts]), encode(QUESTIONS[:args.clients]), \
        long_prompt(loaded.tokenizer)
    with tempfile.TemporaryDirectory(prefix="anchor-adapters-") as folder:
        adapters = make_adapters(engine.model.config, Path(folder), args.clients, rank=args.adapter_rank)
        for adapter in adapters:
            engine.load_adapter(adapter.name, adapter.peft_dir)
        names = [adapter.name for adapter in adapters]
        tunery_side(engine, prompts[:1], long_ids[:32], 4, clients, names)  # warm-up
        base_texts: list[str] = []
        engine_run(engine, clients, args.new_tokens, base_texts)  # the base model's answers, for the check
        rows: dict[str, list[dict]] = {"tunery": [], "llama.cpp": []}
        for rep in range(args.repetitions):
            order = ("tunery", "llama.cpp") if rep % 2 == 0 else ("llama.cpp", "tunery")
            for side in order:
                load = os.getloadavg()[0]
                result = (tunery_side(engine, prompts, long_ids, args.new_tokens, clients, names) if side == "tunery"
                          else llama_side(args, gguf, prompts, long_ids, clients, adapters, check=rep == 0))
                result.update(side=side, repetition=rep + 1, load_1min=load, time=time.strftime("%H:%M:%S"))
                rows[side].append(result)
                print(json.dumps({k: v for k, v in result.items() if not k.endswith(("_texts", "_tokens"))}),
                      flush=True)
    engine.stop()
    print_table(args, rows, len(long_ids), loaded, gguf)
    if args.clients:
        print_clients(args, rows, base_texts, loaded.tokenizer)


def median_span(rows, side, key) -> tuple[float, str]:
    values = [r[key] for r in rows[side]]
    middle = statistics.median(values)
    return middle, f"{middle:.1f} ({min(values):.1f}–{max(values):.1f})"


def print_table(args, rows, long_tokens, loaded, gguf) -> None:
    loads = [r["load_1min"] for side in rows for r in rows[side]]
    print(f"\n- {args.repetitions} alternating repetitions, {args.threads} threads each side, {args.prompts} prompts x "
          f"{args.new_tokens} new tokens (decode), one prompt of {long_tokens} tokens (prompt); 1-minute load average "
          f"{min(loads):.1f}–{max(loads):.1f} during the run on {os.cpu_count()} CPUs")
    print(f"- tunery: {loaded.quantization.summary()}; {loaded.decode_summary}; speculation off")
    print(f"- llama.cpp: {rows['llama.cpp'][0]['build']} on `{Path(gguf).name}`; python {sys.version.split()[0]}\n")
    print("| single stream | llama.cpp | tunery lane (int4) | tunery / llama.cpp |\n|---|---|---|---|")
    for key, label in (("decode_tokens_per_s", "decode tokens/s"), ("prompt_tokens_per_s", "prompt tokens/s")):
        (theirs, their_text), (ours, our_text) = median_span(rows, "llama.cpp", key), median_span(rows, "tunery", key)
        print(f"| {label} | {their_text} | {our_text} | **{ours / theirs:.2f}x** |")
    print(f"\n(finished {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)")


def shared_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def print_clients(args, rows, base_texts, tokenizer) -> None:
    """The clients table, and the check that every adapter changed both sides' answers alike."""
    print(f"\n| {args.clients} clients at once, each on its own LoRA adapter | llama.cpp | tunery lane (int4) "
          "| tunery / llama.cpp |\n|---|---|---|---|")
    for key, label in (("clients_tokens_per_s", "total tokens/s"),
                       ("clients_tokens_per_cpu_s", "tokens per CPU second"),
                       ("clients_ttft_ms", "time to first token, median, ms")):
        (theirs, their_text), (ours, our_text) = median_span(rows, "llama.cpp", key), median_span(rows, "tunery", key)
        inverse = key == "clients_ttft_ms"  # a time: llama.cpp's over tunery's, so above 1 is tunery ahead
        ratio = theirs / ours if inverse else ours / theirs
        print(f"| {label} | {their_text} | {our_text} | **{ratio:.2f}x**{' (llama.cpp / tunery)' if inverse else ''} |")

    def text(ids):
        return tokenizer.decode(ids, skip_special_tokens=True)

    first = next(r for r in rows["llama.cpp"] if "base_tokens" in r)
    theirs, their_base = [text(t) for t in first["clients_tokens"]], [text(t) for t in first["base_tokens"]]
    ours = rows["tunery"][0]["clients_texts"]
    for side, answers, base in (("llama.cpp", theirs, their_base), ("tunery", ours, base_texts)):
        changed = sum(a != b for a, b in zip(answers, base))
        print(f"- {side}: {changed} of {len(answers)} answers differ from the base model's, "
              f"{len(set(answers))} distinct")
    base_shared = statistics.median(shared_prefix(a, b) for a, b in zip(base_texts, their_base))
    adapter_shared = statistics.median(shared_prefix(a, b) for a, b in zip(ours, theirs))
    print(f"- characters the two sides' answers share from the start, median: {base_shared:.0f} on the base model, "
          f"{adapter_shared:.0f} on the adapters (answers of about {statistics.median(len(a) for a in ours):.0f})")


if __name__ == "__main__":
    main()
