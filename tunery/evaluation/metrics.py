"""Text metrics that score one prediction against one reference, each in [0, 1].

Every metric returns a dict of named scores (most return one; `json_fields` returns the
all-fields fraction, an all-or-nothing score and one score per field). Knows nothing of models.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable

from tunery.errors import EvaluationError

ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = set(string.punctuation)
CODE_FENCE = re.compile(r"^```[a-zA-Z0-9_-]*\s*\n?(.*?)\n?```$", re.DOTALL)


def normalize_text(text: str) -> str:
    """Lower-case, drop punctuation and English articles, collapse whitespace (SQuAD's rule)."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def score_exact_match(prediction: str, reference: str) -> dict[str, float]:
    return {"exact_match": float(normalize_text(prediction) == normalize_text(reference))}


def score_contains(prediction: str, reference: str) -> dict[str, float]:
    needle = normalize_text(reference)
    # An empty reference would be "contained" in everything; it scores only an empty prediction.
    hit = needle in normalize_text(prediction) if needle else not normalize_text(prediction)
    return {"contains": float(hit)}


def score_token_f1(prediction: str, reference: str) -> dict[str, float]:
    pred_tokens, ref_tokens = normalize_text(prediction).split(), normalize_text(reference).split()
    if not pred_tokens or not ref_tokens:
        return {"token_f1": float(pred_tokens == ref_tokens)}
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return {"token_f1": 0.0}
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return {"token_f1": 2 * precision * recall / (precision + recall)}


def tokenize_words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def longest_common_subsequence(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def score_rouge_l(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-L F1: longest common word subsequence over lower-cased word tokens."""
    pred_tokens, ref_tokens = tokenize_words(prediction), tokenize_words(reference)
    if not pred_tokens or not ref_tokens:
        return {"rouge_l": float(pred_tokens == ref_tokens)}
    lcs = longest_common_subsequence(pred_tokens, ref_tokens)
    if lcs == 0:
        return {"rouge_l": 0.0}
    precision, recall = lcs / len(pred_tokens), lcs / len(ref_tokens)
    return {"rouge_l": 2 * precision * recall / (precision + recall)}


def parse_json_prediction(prediction: str):
    """The JSON value in a prediction, allowing one surrounding ``` fence; raises ValueError."""
    text = prediction.strip()
    fenced = CODE_FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    return json.loads(text)


def score_json_valid(prediction: str, reference: str) -> dict[str, float]:
    try:
        parse_json_prediction(prediction)
    except ValueError:
        return {"json_valid": 0.0}
    return {"json_valid": 1.0}


def values_match(predicted, expected) -> bool:
    # Strings compare after trimming and case-folding; numbers compare by value (1 == 1.0).
    if isinstance(expected, str) and isinstance(predicted, str):
        return predicted.strip().casefold() == expected.strip().casefold()
    if isinstance(expected, bool) or isinstance(predicted, bool):
        return predicted is expected
    return predicted == expected


def score_json_fields(prediction: str, reference: str, fields: tuple[str, ...] | None = None) -> dict[str, float]:
    """Per field of the reference object (or of `fields` only): does the prediction hold the same value."""
    expected = json.loads(reference)
    if fields:
        expected = {key: value for key, value in expected.items() if key in fields}
    try:
        predicted = parse_json_prediction(prediction)
    except ValueError:
        predicted = None
    if not isinstance(predicted, dict):
        predicted = {}
    per_field = {key: float(key in predicted and values_match(predicted[key], value))
                 for key, value in expected.items()}
    fraction = sum(per_field.values()) / len(per_field) if per_field else 1.0
    scores = {"json_fields": fraction, "json_fields_all": float(fraction == 1.0)}
    scores.update({f"json_field.{key}": value for key, value in per_field.items()})
    return scores


def score_regex(prediction: str, reference: str) -> dict[str, float]:
    """The reference is a Python regular expression that must match the whole stripped prediction."""
    return {"regex": float(re.fullmatch(reference, prediction.strip(), re.DOTALL) is not None)}


METRICS: dict[str, Callable[[str, str], dict[str, float]]] = {
    "exact_match": score_exact_match,
    "contains": score_contains,
    "token_f1": score_token_f1,
    "rouge_l": score_rouge_l,
    "json_valid": score_json_valid,
    "json_fields": score_json_fields,
    "regex": score_regex,
}
# Scored by a judge model in `judge.py`, not by a function of two strings.
MODEL_METRICS = {"judge"}
KNOWN_METRICS = set(METRICS) | MODEL_METRICS
TEXT_DEFAULTS = ("exact_match", "token_f1", "rouge_l")
JSON_DEFAULTS = ("json_valid", "json_fields")


def reference_is_json_object(reference: str) -> bool:
    try:
        return isinstance(json.loads(reference), dict)
    except ValueError:
        return False


def default_metrics(reference: str) -> tuple[str, ...]:
    """Metrics for a row that names none: JSON ones for a JSON-object reference, text ones otherwise."""
    return JSON_DEFAULTS if reference_is_json_object(reference) else TEXT_DEFAULTS


def check_reference(metric: str, reference: str, where: str) -> None:
    """Fail early, before any generation, on a reference the metric cannot use."""
    if metric not in KNOWN_METRICS:
        raise EvaluationError(f"{where}: unknown metric {metric!r}", code="unknown_metric",
                              hint=f"known metrics: {', '.join(sorted(KNOWN_METRICS))}")
    if metric == "json_fields" and not reference_is_json_object(reference):
        raise EvaluationError(f"{where}: metric json_fields needs a JSON object as reference",
                              code="invalid_reference", hint='write "reference": {"field": "value", ...}')
    if metric == "regex":
        try:
            re.compile(reference)
        except re.error as exc:
            raise EvaluationError(f"{where}: reference is not a valid regular expression ({exc})",
                                  code="invalid_reference") from None


def score_prediction(prediction: str, reference: str, metrics: tuple[str, ...],
                     json_fields: tuple[str, ...] | None = None) -> dict[str, float]:
    """All named scores of one prediction under the given (non-model) metrics.

    `json_fields` limits `json_fields` to those keys (e.g. leave out a free-text summary).
    """
    scores: dict[str, float] = {}
    for name in metrics:
        if name == "json_fields":
            scores.update(score_json_fields(prediction, reference, json_fields))
        elif name in METRICS:
            scores.update(METRICS[name](prediction, reference))
    return scores
