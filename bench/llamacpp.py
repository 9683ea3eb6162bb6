"""llama.cpp on the serving benchmark's model and prompts: the tool a CPU user would pick instead.

Runs llama-cpp-python (`pip install llama-cpp-python`; a build without -march=native:
`CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install llama-cpp-python`) on a GGUF file, by default the
built-in model's own (its decoder is Q4_1), fed the same prompt token ids as tunery's engine, greedy,
exactly the same number of new tokens. Single stream: one request at a time. Clients: the same
requests arriving together; llama-cpp-python's `Llama` serves one sequence at a time, so they are
answered one after another (llama.cpp's own server batches parallel slots, but not requests on
different LoRA adapters). Knows llama_cpp and timing; nothing of tunery's engine.
"""

from __future__ import annotations

import time
from pathlib import Path


def llama_cpp_status(gguf: str | None) -> tuple[object | None, str]:
    """(the llama_cpp module or None, a line saying which build runs or why it does not)."""
    try:
        import llama_cpp
    except ImportError:
        return None, "llama.cpp rows left out: llama-cpp-python is not installed in this environment"
    system = llama_cpp.llama_print_system_info()
    system = system.decode() if isinstance(system, bytes) else str(system)
    return llama_cpp, f"llama-cpp-python {llama_cpp.__version__} ({system.strip()}) on `{Path(gguf).name}`"


def default_gguf(model: str) -> str:
    from tunery.models.builtin import builtin_gguf_path

    return str(builtin_gguf_path(model))


class LlamaCpp:
    """One llama.cpp model, greedy, fed token ids."""

    def __init__(self, llama_cpp, gguf: str, threads: int, context: int = 2048):
        self.llm = llama_cpp.Llama(model_path=gguf, n_ctx=context, n_threads=threads, n_threads_batch=threads,
                                   n_batch=512, verbose=False, logits_all=False)

    def complete(self, ids: list[int], max_new_tokens: int) -> tuple[list[int], float, float]:
        """(new tokens, seconds to the first, seconds in all): exactly max_new_tokens, EOS ignored."""
        start, first, tokens = time.perf_counter(), None, []
        for token in self.llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
            first = first if first is not None else time.perf_counter() - start
            tokens.append(int(token))
            if len(tokens) >= max_new_tokens:
                break
        return tokens, first or 0.0, time.perf_counter() - start

    def single(self, prompts: list[list[int]], max_new_tokens: int, texts: list | None = None) -> tuple[float, float]:
        """(tokens/s over the prompts one at a time, median time to first token in ms)."""
        seconds, tokens, firsts = 0.0, 0, []
        for ids in prompts:
            new, first, took = self.complete(ids, max_new_tokens)
            seconds, tokens = seconds + took, tokens + len(new)
            firsts.append(first * 1000)
            if texts is not None:
                texts.append(new)
        firsts.sort()
        return tokens / seconds, firsts[len(firsts) // 2]

    def clients(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[float, float]:
        """(total tokens/s, median time to first token in ms) when the requests arrive together and are
        answered one after another (each waits for those before it)."""
        start, tokens, firsts = time.perf_counter(), 0, []
        for ids in prompts:
            began = time.perf_counter() - start
            new, first, _ = self.complete(ids, max_new_tokens)
            tokens += len(new)
            firsts.append((began + first) * 1000)
        firsts.sort()
        return tokens / (time.perf_counter() - start), firsts[len(firsts) // 2]
