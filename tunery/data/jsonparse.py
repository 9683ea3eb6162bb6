"""Strict JSON parsing for untrusted dataset text: no NaN/Infinity, no giant numbers, bounded nesting.

Problems come back as (code, message, column) so each file reader can locate them in its own terms.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 64
MAX_NUMBER_CHARS = 100
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


@dataclass(frozen=True)
class JsonProblem(Exception):
    """Why a piece of text is not acceptable JSON; `pos` is a 0-based character offset."""

    code: str
    message: str
    pos: int = 0


def _reject_constant(name: str) -> Any:
    raise JsonProblem("non_finite_number", f"{name} is not valid JSON")


def _parse_int(digits: str) -> int:
    if len(digits) > MAX_NUMBER_CHARS:
        raise JsonProblem("number_too_long", f"a number with {len(digits)} digits")
    return int(digits)


def _parse_float(text: str) -> float:
    if len(text) > MAX_NUMBER_CHARS:
        raise JsonProblem("number_too_long", f"a number with {len(text)} characters")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JsonProblem("non_finite_number", f"{text} overflows to infinity")
    return value


DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float)


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    """Raise JsonProblem when brackets outside strings nest deeper than `max_depth`."""
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > max_depth:
            raise JsonProblem("too_deep", f"JSON nested more than {max_depth} levels deep")


def parse_json(text: str) -> Any:
    """Parse one JSON value with every guard on; raise JsonProblem on anything unacceptable."""
    check_depth(text)
    try:
        return DECODER.decode(text)
    except JsonProblem:
        raise
    except json.JSONDecodeError as exc:
        raise JsonProblem("invalid_json", describe_decode_error(exc), exc.pos) from None
    except RecursionError:
        raise JsonProblem("too_deep", "JSON nested too deeply") from None
    except ValueError as exc:  # e.g. int() digit limits on exotic inputs
        raise JsonProblem("invalid_json", str(exc)) from None


def describe_decode_error(exc: json.JSONDecodeError) -> str:
    at_end = exc.pos >= len(exc.doc.rstrip())
    suffix = " (the text ends early: truncated?)" if at_end else ""
    return f"invalid JSON at column {exc.colno}: {exc.msg}{suffix}"
