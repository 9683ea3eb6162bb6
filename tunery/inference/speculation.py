"""Prompt-lookup speculation: one policy for every backend.

A lone greedy row proposes the tokens that followed the latest earlier occurrence of its last few
tokens; one step scores them all and the engine keeps the prefix the model itself would have
picked, plus the model's next token. Greedy output is unchanged. How long a draft may be is the
backend's cost: a torch step on a CPU costs about the same for one token as for seven (start long),
a fast-lane pass costs more per extra token (start at one, grow while drafts are accepted whole).
Knows token lists only; nothing about models or caches.
"""

from __future__ import annotations

from dataclasses import dataclass

NGRAM_SIZES = (3, 2)
SEARCH_WINDOW = 1024  # tokens searched back for a match (keeps the lookup cheap on long contexts)
MAX_BACKOFF = 16  # a draft rejected outright costs a little: text that does not repeat stops drafting


def ngram_draft(tokens: list[int], max_draft: int, sizes: tuple[int, ...] = NGRAM_SIZES) -> list[int]:
    """Up to `max_draft` tokens that followed the latest earlier occurrence of the last n tokens."""
    if max_draft <= 0:
        return []
    for n in sizes:
        if len(tokens) <= n:
            continue
        tail = tokens[-n:]
        for start in range(len(tokens) - n - 1, max(-1, len(tokens) - SEARCH_WINDOW - 1), -1):
            if tokens[start:start + n] == tail:
                return tokens[start + n:start + n + max_draft]
    return []


@dataclass
class DraftState:
    """One request's place in the policy."""

    length: int  # the next draft's longest length
    wait: int = 0  # plain steps left before drafting again
    backoff: int = 1  # plain steps after the next draft rejected outright (doubles, up to MAX_BACKOFF)


@dataclass(frozen=True)
class DraftPolicy:
    """Drafts start `first` tokens long and grow by one while accepted whole, up to `longest`; a
    partly accepted draft sets the length to what was accepted (at least `first`); one rejected
    outright pauses drafting for a number of steps that doubles each time."""

    first: int
    longest: int

    def new_state(self) -> DraftState:
        return DraftState(length=self.first)

    def draft(self, state: DraftState, history: list[int], room: int) -> list[int]:
        """The draft to score now (empty: take a plain step); `room`: tokens the request may still add."""
        if state.wait > 0:
            state.wait -= 1
            return []
        draft = ngram_draft(history, min(state.length, room))
        if not draft:
            state.wait -= 1
        return draft

    def record(self, state: DraftState, drafted: int, accepted: int) -> None:
        if accepted == 0:
            state.wait, state.backoff = state.backoff, min(MAX_BACKOFF, state.backoff * 2)
        else:
            state.backoff = 1
        state.length = min(self.longest, state.length + 1) if accepted == drafted else max(self.first, accepted)
