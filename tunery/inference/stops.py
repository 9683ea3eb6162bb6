"""Incremental detokenization with stop strings: what text is safe to emit after each token.

Text that could still turn into a stop string, or an incomplete UTF-8 character, is held back
until the next token decides it; a found stop string ends the output before it.
"""

from __future__ import annotations


class TextTracker:
    """Decodes a growing list of output ids and tracks the emitted prefix."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Add one generated token; return the newly emittable text (may be empty)."""
        self.ids.append(token_id)
        # Decoding the whole output each time is quadratic but tiny next to a forward pass,
        # and it is the only way byte-level BPE tokens split inside characters come out right.
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        # Every stop completed by this token counts; the output ends before the earliest-starting one
        # (with stops "|" and " |", the text " |" ends before the space).
        found = [i for stop in self.stop if (i := self.text.find(stop, max(0, self.emitted - len(stop)))) != -1]
        if found:
            self.text = self.text[:min(found)]
            self.stopped = True
        if self.stopped:
            return self._emit(len(self.text))
        safe = len(self.text)
        if self.text.endswith("\ufffd"):
            safe = len(self.text.rstrip("\ufffd"))
        safe = min(safe, len(self.text) - self._held_back())
        return self._emit(max(safe, self.emitted))

    def flush(self) -> str:
        """At the end of generation: whatever was held back is final text now."""
        return self._emit(len(self.text))

    def _held_back(self) -> int:
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self.text)), 0, -1):
                if self.text.endswith(stop[:n]):
                    longest = max(longest, n)
                    break
        return longest

    def _emit(self, upto: int) -> str:
        upto = min(max(upto, self.emitted), len(self.text))
        piece = self.text[self.emitted:upto]
        self.emitted = upto
        return piece
