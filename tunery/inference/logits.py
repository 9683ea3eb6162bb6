"""What a request does to its own row of logits before a token is picked: logit_bias, presence and
frequency penalties, and a grammar's mask (constrained decoding); and the log-probabilities it asks for.

One `RowShaper` per request, applied in the engine's single picking step, so every backend gets
the same behaviour. Knows tokens and one row of logits; nothing about batching or HTTP.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import TYPE_CHECKING

import torch

from tunery.inference.params import SamplingParams

if TYPE_CHECKING:
    import llguidance


@functools.lru_cache(maxsize=4)
def grammar_tokenizer(tokenizer, stop_ids: tuple[int, ...], vocab_size: int):
    """llguidance's view of the tokenizer (about a second to build, so kept per engine tokenizer)."""
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=list(stop_ids))


def needs_shaping(params: SamplingParams) -> bool:
    return bool(params.grammar or params.logit_bias or params.presence_penalty or params.frequency_penalty
                or params.logprobs is not None)


class RowShaper:
    """One request's logit changes and grammar state, advanced token by token."""

    def __init__(self, params: SamplingParams, tokenizer, stop_ids: list[int], vocab_size: int):
        self.params, self.counts = params, Counter[int]()
        self.matcher: llguidance.LLMatcher | None = None
        if params.grammar:
            import llguidance

            lltok = grammar_tokenizer(tokenizer, tuple(sorted(stop_ids)), vocab_size)
            self.matcher = llguidance.LLMatcher(lltok, params.grammar)
            if self.matcher.is_error():
                raise ValueError(f"grammar rejected: {self.matcher.get_error()}")
        self.bias = None
        if params.logit_bias:
            self.bias = torch.zeros(vocab_size)
            for token, value in params.logit_bias:
                if 0 <= token < vocab_size:
                    self.bias[token] = value

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """A new row: bias, penalties over generated tokens, then the grammar's mask."""
        logits = logits.float().clone()
        if self.bias is not None:
            logits += self.bias[: logits.shape[-1]]
        if self.counts and (self.params.presence_penalty or self.params.frequency_penalty):
            ids = torch.tensor(list(self.counts), dtype=torch.long)
            counts = torch.tensor([self.counts[i] for i in self.counts], dtype=torch.float32)
            logits[ids] -= counts * self.params.frequency_penalty + self.params.presence_penalty
        if self.matcher is not None and not self.matcher.is_error():
            logits = logits.masked_fill(~self.allowed(logits.shape[-1]), float("-inf"))
        return logits

    def allowed(self, vocab_size: int) -> torch.Tensor:
        assert self.matcher is not None, "only a request with a grammar has allowed tokens"
        words = torch.frombuffer(bytearray(self.matcher.compute_bitmask()), dtype=torch.int32)
        bits = (words.unsqueeze(1) >> torch.arange(32, dtype=torch.int32)) & 1
        allowed = bits.flatten().bool()[:vocab_size]
        if allowed.shape[0] < vocab_size:
            allowed = torch.cat([allowed, torch.zeros(vocab_size - allowed.shape[0], dtype=torch.bool)])
        return allowed

    def accept(self, token: int) -> None:
        self.counts[token] += 1
        if self.matcher is not None and not self.matcher.is_stopped():
            self.matcher.consume_token(token)

    def logprob_entry(self, logits: torch.Tensor, token: int, tokenizer) -> dict:
        """OpenAI's logprobs entry for the picked token: its log-probability and the top alternatives."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top = int(self.params.logprobs or 0)
        entry = token_entry(tokenizer, token, float(logprobs[token]))
        if top:
            values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]))
            entry["top_logprobs"] = [token_entry(tokenizer, int(i), float(v)) for v, i in zip(values, ids)]
        else:
            entry["top_logprobs"] = []
        return entry


def token_entry(tokenizer, token: int, logprob: float) -> dict:
    text = tokenizer.decode([token])
    return {"token": text, "logprob": max(logprob, -9999.0), "bytes": list(text.encode("utf-8"))}
