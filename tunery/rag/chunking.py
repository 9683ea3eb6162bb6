"""Split document sections into chunks of at most N tokens of the model's tokenizer.

Chunks end at paragraph ends where they can, else at sentence ends; a sentence longer than a
chunk is cut by tokens. Consecutive chunks share up to `overlap_tokens` of whole sentences.
Every chunk keeps its source, page, lines and character offsets for citations.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass

from tunery.rag.readers import Section

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?;])[\"')\]]*\s+")


@dataclass(frozen=True)
class Unit:
    """A sentence (or a piece of one) with its character span in the section and its token count."""

    start: int
    end: int
    tokens: int
    paragraph: int


def split_units(text: str) -> list[tuple[int, int, int]]:
    """(start, end, paragraph number) of every sentence, whitespace trimmed."""
    units = []
    paragraph_start = 0
    for number, match in enumerate([*_PARAGRAPH_BREAK.finditer(text), None]):
        paragraph_end = match.start() if match else len(text)
        start = paragraph_start
        for sentence in [*_SENTENCE_END.finditer(text, paragraph_start, paragraph_end), None]:
            end = sentence.start() if sentence else paragraph_end
            span = _trim(text, start, end)
            if span:
                units.append((*span, number))
            if sentence:
                start = sentence.end()
        paragraph_start = match.end() if match else len(text)
    return units


def _trim(text: str, start: int, end: int) -> tuple[int, int] | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def measure_units(text: str, tokenizer, chunk_tokens: int, overlap_tokens: int) -> list[Unit]:
    """Sentences with their token counts; a sentence longer than a chunk becomes token windows."""
    spans = split_units(text)
    if not spans:
        return []
    counts = tokenizer([text[s:e] for s, e, _ in spans], add_special_tokens=False)["input_ids"]
    units = []
    for (start, end, paragraph), ids in zip(spans, counts):
        if len(ids) <= chunk_tokens:
            units.append(Unit(start, end, len(ids), paragraph))
        else:
            units.extend(_token_windows(text, start, end, paragraph, tokenizer, chunk_tokens, overlap_tokens))
    return units


def _token_windows(text, start, end, paragraph, tokenizer, chunk_tokens, overlap_tokens) -> list[Unit]:
    encoded = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    step = max(1, chunk_tokens - overlap_tokens)
    windows = []
    for first in range(0, len(offsets), step):
        last = min(first + chunk_tokens, len(offsets)) - 1
        windows.append(Unit(start + offsets[first][0], start + offsets[last][1], last - first + 1, paragraph))
        if last == len(offsets) - 1:
            break
    return windows


def pack_units(units: list[Unit], chunk_tokens: int, overlap_tokens: int) -> list[list[Unit]]:
    """Group sentences into chunks: greedy, closing early at a paragraph end when the next paragraph
    would fit a chunk of its own; each new chunk starts with the last sentences of the one before
    (at most `overlap_tokens`) unless it starts a paragraph."""
    paragraph_tokens: dict[int, int] = {}
    for unit in units:
        paragraph_tokens[unit.paragraph] = paragraph_tokens.get(unit.paragraph, 0) + unit.tokens
    chunks: list[list[Unit]] = []
    current: list[Unit] = []
    size = 0
    for unit in units:
        new_paragraph = bool(current) and unit.paragraph != current[-1].paragraph
        full = size + unit.tokens > chunk_tokens
        break_early = (new_paragraph and size + paragraph_tokens[unit.paragraph] > chunk_tokens
                       and paragraph_tokens[unit.paragraph] <= chunk_tokens)
        if current and (full or break_early):
            chunks.append(current)
            current = [] if new_paragraph else _overlap(current, overlap_tokens, chunk_tokens - unit.tokens)
            size = sum(u.tokens for u in current)
        current.append(unit)
        size += unit.tokens
    if current:
        chunks.append(current)
    return chunks


def _overlap(previous: list[Unit], overlap_tokens: int, room: int) -> list[Unit]:
    kept: list[Unit] = []
    size = 0
    for unit in reversed(previous[1:]):  # never the whole previous chunk again
        if size + unit.tokens > min(overlap_tokens, room) or unit.end - unit.start <= 0:
            break
        kept.insert(0, unit)
        size += unit.tokens
    return kept


def chunk_section(section: Section, tokenizer, *, chunk_tokens: int, overlap_tokens: int) -> list[dict]:
    """The chunks of one section as index records (without ids): text, source, page, lines, offsets."""
    text = section.text
    units = measure_units(text, tokenizer, chunk_tokens, overlap_tokens)
    records = []
    newline_at = [i for i, ch in enumerate(text) if ch == "\n"]
    for group in pack_units(units, chunk_tokens, overlap_tokens):
        start, end = group[0].start, max(u.end for u in group)
        records.append({"source": section.source, "page": section.page,
                        "line": section.line + _count_before(newline_at, start),
                        "end_line": section.line + _count_before(newline_at, end - 1),
                        "start": section.offset + start, "end": section.offset + end,
                        "tokens": sum(u.tokens for u in group), "text": text[start:end]})
    return records


def _count_before(positions: list[int], index: int) -> int:
    return bisect_left(positions, index)
