"""Each metric against numbers worked out by hand."""

from __future__ import annotations

import pytest

from tunery.errors import EvaluationError
from tunery.evaluation.metrics import (
    check_reference,
    default_metrics,
    normalize_text,
    score_contains,
    score_exact_match,
    score_json_fields,
    score_json_valid,
    score_prediction,
    score_regex,
    score_rouge_l,
    score_token_f1,
)


def test_normalize_drops_case_punctuation_articles_and_spaces():
    assert normalize_text("  The  Cat, sat!\n") == "cat sat"


def test_exact_match_is_normalised():
    assert score_exact_match("The answer: Paris.", "answer paris") == {"exact_match": 1.0}
    assert score_exact_match("Paris, France", "Paris") == {"exact_match": 0.0}


def test_contains():
    assert score_contains("I think it is Paris, France.", "paris") == {"contains": 1.0}
    assert score_contains("London", "Paris") == {"contains": 0.0}


def test_token_f1_by_hand():
    # prediction tokens: [cat, sat, on, mat] reference: [cat, sat, down]; common 2
    # precision 2/4, recall 2/3, F1 = 2*(1/2)(2/3)/(1/2+2/3) = 4/7
    assert score_token_f1("the cat sat on the mat", "cat sat down")["token_f1"] == pytest.approx(4 / 7)
    assert score_token_f1("x", "y")["token_f1"] == 0.0
    assert score_token_f1("", "")["token_f1"] == 1.0


def test_rouge_l_by_hand():
    # pred [a, b, c, d, e], ref [a, c, e, f]: LCS = a c e = 3; P = 3/5, R = 3/4, F = 2PR/(P+R) = 2/3
    assert score_rouge_l("a b c d e", "a c e f")["rouge_l"] == pytest.approx(2 / 3)
    assert score_rouge_l("Police killed the gunman", "police kill the gunman")["rouge_l"] == pytest.approx(0.75)


def test_json_valid_accepts_one_fence_and_rejects_prose():
    assert score_json_valid('```json\n{"a": 1}\n```', "")["json_valid"] == 1.0
    assert score_json_valid('{"a": 1', "")["json_valid"] == 0.0
    assert score_json_valid("Sure! {\"a\": 1}", "")["json_valid"] == 0.0


def test_json_fields_per_field_and_all():
    reference = '{"category": "network", "priority": "high", "team": "netops", "count": 2}'
    scores = score_json_fields('{"category": "Network ", "priority": "low", "count": 2.0}', reference)
    assert scores["json_field.category"] == 1.0  # trimmed, case-folded
    assert scores["json_field.priority"] == 0.0
    assert scores["json_field.team"] == 0.0  # missing
    assert scores["json_field.count"] == 1.0  # 2 == 2.0
    assert scores["json_fields"] == 0.5
    assert scores["json_fields_all"] == 0.0
    perfect = score_json_fields(reference, reference)
    assert perfect["json_fields"] == 1.0 and perfect["json_fields_all"] == 1.0
    assert score_json_fields("not json", reference)["json_fields"] == 0.0


def test_json_fields_booleans_are_not_numbers():
    assert score_json_fields('{"ok": 1}', '{"ok": true}')["json_fields"] == 0.0
    assert score_json_fields('{"ok": true}', '{"ok": true}')["json_fields"] == 1.0


def test_regex_must_match_whole_prediction():
    assert score_regex("  TX-4410 ", r"TX-\d+")["regex"] == 1.0
    assert score_regex("part TX-4410", r"TX-\d+")["regex"] == 0.0


def test_default_metrics_follow_reference_shape():
    assert default_metrics('{"a": 1}') == ("json_valid", "json_fields")
    assert default_metrics("Paris") == ("exact_match", "token_f1", "rouge_l")


def test_bad_references_fail_before_generation():
    with pytest.raises(EvaluationError, match="JSON object"):
        check_reference("json_fields", "Paris", "t.jsonl:3")
    with pytest.raises(EvaluationError, match="t.jsonl:4.*regular expression"):
        check_reference("regex", "(unclosed", "t.jsonl:4")
    with pytest.raises(EvaluationError, match="unknown metric 'bleu'"):
        check_reference("bleu", "x", "t.jsonl:5")


def test_score_prediction_combines_metrics():
    scores = score_prediction("Paris", "paris", ("exact_match", "contains"))
    assert scores == {"exact_match": 1.0, "contains": 1.0}


def test_json_fields_limited_to_chosen_keys():
    reference = '{"category": "network", "priority": "P1", "summary": "VPN down for accounts payable."}'
    prediction = '{"category": "network", "priority": "P1", "summary": "The VPN is down."}'
    assert score_json_fields(prediction, reference)["json_fields"] == pytest.approx(2 / 3)
    chosen = score_prediction(prediction, reference, ("json_fields",), ("category", "priority"))
    assert chosen["json_fields"] == 1.0 and chosen["json_fields_all"] == 1.0
    assert "json_field.summary" not in chosen
