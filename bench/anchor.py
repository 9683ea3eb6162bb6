"""tunery's fast lane against llama.cpp on one stream: decode tokens/s and prompt tokens/s, same model,
same prompt token ids, same thread count, the two sides alternating within every repetition.

llama.cpp runs in its own Python (`--llama-python`, an environment with llama-cpp-python, e.g.
`make .venv-ecosystem/.installed`) as a child process per repetition, on the model's GGUF (the
built-in model's own: Q4_1 decoder, Q8_0 embedding). tunery serves `--weights int4` through the lane.
Decode: greedy, exactly `--new-tokens` tokens after each prompt, EOS ignored; tokens/s counts the
tokens after the first over the time after the first. Prompt: a long prompt's tokens over the time
to its first token. Medians over repetitions; the load average is printed with each (on a shared
machine both sides are slowed, which is why they alternate). Prints one JSON line per side and
repetition, then a Markdown table.
Run: `python -m bench.anchor --llama-python .venv-ecosystem/bin/python [--threads 2] [--repetitions 5]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.serve import QUESTIONS


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.anchor", description=__doc__)
    p.add_argument("--model", default="smollm2-135m-instruct", help="Built-in model (its GGUF is llama.cpp's side).")
    p.add_argument("--gguf", default="auto", help="GGUF for llama.cpp; auto: the built-in model's own file.")
    p.add_argument("--llama-python", required=True, help="Python with llama-cpp-python installed.")
    p.add_argument("--threads", type=int, default=2, help="Threads for both sides.")
    p.add_argument("--new-tokens", type=int, default=64, help="Tokens generated per prompt (EOS ignored).")
    p.add_argument("--prompts", type=int, default=4, help="How many of the serving benchmark's prompts decode.")
    p.add_argument("--repetitions", type=int, default=5, help="Alternating repetitions; medians are reported.")
    return p.parse_args(argv)


def long_prompt(tokenizer) -> list[int]:
    """A prompt of a few hundred tokens: the helpdesk system prompt and a long ticket."""
    from tunery.data.template import encode_prompt

    test = Path(__file__).resolve().parent.parent / "examples" / "helpdesk" / "test.jsonl"
    lines = [json.loads(line)["messages"] for line in test.read_text().splitlines()[:6]]
    ticket = "\n\n".join(m["content"] for messages in lines for m in messages if m["role"] == "user")
    return encode_prompt(tokenizer, [lines[0][0], {"role": "user", "content": ticket}])


def tunery_side(engine, prompts, long_ids, new_tokens) -> dict:
    """Decode and prompt tokens/s of the engine, one request at a time, speculation off."""
    from bench.serve import engine_run

    engine.speculate = False
    decode_s = decode_tokens = 0.0
    for ids in prompts:
        seconds, tokens, first = engine_run(engine, [ids], new_tokens)
        decode_s, decode_tokens = decode_s + seconds - first[0], decode_tokens + tokens - 1
    _, _, first = engine_run(engine, [long_ids], 1)
    return {"decode_tokens_per_s": decode_tokens / decode_s, "prompt_tokens_per_s": len(long_ids) / first[0]}


LLAMA_CHILD = r"""
import json, sys, time
import llama_cpp
job = json.loads(sys.stdin.read())
llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=2048, n_threads=job["threads"], n_threads_batch=job["threads"],
                      n_batch=512, verbose=False)
def run(ids, count):
    start, first, tokens = time.perf_counter(), None, 0
    for _ in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
        first = first if first is not None else time.perf_counter() - start
        tokens += 1
        if tokens >= count:
            break
    return first, time.perf_counter() - start, tokens
run(job["prompts"][0], 4)  # warm-up
decode_s = decode_tokens = 0.0
for ids in job["prompts"]:
    first, total, tokens = run(ids, job["new_tokens"])
    decode_s, decode_tokens = decode_s + total - first, decode_tokens + tokens - 1
first, _, _ = run(job["long"], 1)
system = llama_cpp.llama_print_system_info()
print(json.dumps({"decode_tokens_per_s": decode_tokens / decode_s, "prompt_tokens_per_s": len(job["long"]) / first,
                  "build": f"llama-cpp-python {llama_cpp.__version__} ({(system.decode() if isinstance(system, bytes) else system).strip()})"}))
"""


def llama_side(args, gguf, prompts, long_ids) -> dict:
    job = json.dumps({"gguf": gguf, "threads": args.threads, "prompts": prompts, "long": long_ids,
                      "new_tokens": args.new_tokens})
    result = subprocess.run([args.llama_python, "-c", LLAMA_CHILD], input=job, capture_output=True, text=True,
                            timeout=1800, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from bench.llamacpp import default_gguf
    from tunery.data.template import encode_prompt
    from tunery.inference.loaded_engine import load_engine

    torch.set_num_threads(args.threads)
    gguf = default_gguf(args.model) if args.gguf == "auto" else args.gguf
    loaded = load_engine(args.model, dtype="fp32", weights="int4", max_batch_size=1)
    engine = loaded.engine.start()
    prompts = [encode_prompt(loaded.tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS[:args.prompts]]
    long_ids = long_prompt(loaded.tokenizer)
    tunery_side(engine, prompts[:1], long_ids[:32], 4)  # warm-up
    rows: dict[str, list[dict]] = {"tunery": [], "llama.cpp": []}
    for rep in range(args.repetitions):
        order = ("tunery", "llama.cpp") if rep % 2 == 0 else ("llama.cpp", "tunery")
        for side in order:
            load = os.getloadavg()[0]
            result = (tunery_side(engine, prompts, long_ids, args.new_tokens) if side == "tunery"
                      else llama_side(args, gguf, prompts, long_ids))
            result.update(side=side, repetition=rep + 1, load_1min=load, time=time.strftime("%H:%M:%S"))
            rows[side].append(result)
            print(json.dumps(result), flush=True)
    engine.stop()
    print_table(args, rows, len(long_ids), loaded, gguf)


def print_table(args, rows, long_tokens, loaded, gguf) -> None:
    def med(side, key):
        return statistics.median(r[key] for r in rows[side])

    def span(side, key):
        values = [r[key] for r in rows[side]]
        return f"{med(side, key):.1f} ({min(values):.1f}–{max(values):.1f})"

    loads = [r["load_1min"] for side in rows for r in rows[side]]
    print(f"\n- {args.repetitions} alternating repetitions, {args.threads} threads each side, {args.prompts} prompts x "
          f"{args.new_tokens} new tokens (decode), one prompt of {long_tokens} tokens (prompt); 1-minute load average "
          f"{min(loads):.1f}–{max(loads):.1f} during the run on {os.cpu_count()} CPUs")
    print(f"- tunery: {loaded.quantization.summary()}; {loaded.decode_summary}; speculation off")
    print(f"- llama.cpp: {rows['llama.cpp'][0]['build']} on `{Path(gguf).name}`; python {sys.version.split()[0]}\n")
    print("| single stream | llama.cpp | tunery lane (int4) | tunery / llama.cpp |\n|---|---|---|---|")
    for key, label in (("decode_tokens_per_s", "decode tokens/s"), ("prompt_tokens_per_s", "prompt tokens/s")):
        ratio = med("tunery", key) / med("llama.cpp", key)
        print(f"| {label} | {span('llama.cpp', key)} | {span('tunery', key)} | **{ratio:.2f}x** |")
    print(f"\n(started {time.strftime('%Y-%m-%d %H:%M')} UTC)")


if __name__ == "__main__":
    main()
