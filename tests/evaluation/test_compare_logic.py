"""Bootstrap intervals, paired deltas, wins/losses/ties, regression order and gate rules, on known numbers."""

from __future__ import annotations

import pytest

from tunery.errors import ConfigError
from tunery.evaluation.compare import check_gates, compare_results
from tunery.evaluation.evaluate import EvalResult, aggregate_scores
from tunery.evaluation.gates import check_gate, parse_gate
from tunery.evaluation.statistics import bootstrap_delta, bootstrap_mean, count_outcomes


def make_result(label, scores):
    rows = [{"id": f"r{i}", "location": f"t.jsonl:{i + 1}", "messages": [{"role": "user", "content": f"q{i}"}],
             "reference": "ref", "prediction": f"{label}-{i}", "metrics": ["exact_match"],
             "scores": {"exact_match": s}, "score": s} for i, s in enumerate(scores)]
    return EvalResult(model_ref=label, label=label, metrics=aggregate_scores(rows), rows=rows)


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = [0.0, 1.0] * 20
    first, second = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert first == second
    assert first.value == 0.5
    assert first.low < 0.5 < first.high
    assert 0.3 < first.low and first.high < 0.7  # standard error of a fair coin over 40 ≈ 0.079


def test_constant_differences_have_a_zero_width_interval():
    interval = bootstrap_delta([0.0, 0.5, 0.25], [0.5, 1.0, 0.75])
    assert (interval.value, interval.low, interval.high) == pytest.approx((0.5, 0.5, 0.5))


def test_outcomes_count_each_example():
    assert count_outcomes([0, 1, 0.5, 0.5], [1, 0, 0.5, 0.7]) == {"wins": 2, "losses": 1, "ties": 1}


def test_compare_results_deltas_outcomes_and_worst_regression_first():
    base = make_result("base", [0.0, 1.0, 1.0, 0.5, 0.0])
    tuned = make_result("tuned", [1.0, 0.0, 0.5, 0.5, 1.0])
    comparison = compare_results(base, tuned)
    delta = comparison.deltas["exact_match"]
    assert delta["baseline"] == pytest.approx(0.5) and delta["candidate"] == pytest.approx(0.6)
    assert delta["delta"] == pytest.approx(0.1)
    assert delta["low"] <= 0.1 <= delta["high"] and delta["n"] == 5
    assert comparison.outcomes == {"wins": 2, "losses": 2, "ties": 1}
    assert [x["id"] for x in comparison.regressions] == ["r1", "r2"]  # -1.0 before -0.5
    assert comparison.regressions[0]["baseline"] == "base-1" and comparison.regressions[0]["candidate"] == "tuned-1"
    assert [x["id"] for x in comparison.improvements] == ["r0", "r4"]


def test_gate_parsing():
    assert parse_gate("json_fields>=0.9").kind == "threshold"
    gate = parse_gate("exact_match.delta > -0.05")
    assert (gate.kind, gate.metric, gate.op, gate.value) == ("delta", "exact_match", ">", -0.05)
    assert parse_gate("no-regression:0.02").value == 0.02
    assert parse_gate("json_field.team>=1").metric == "json_field.team"
    for bad in ("json_fields=>0.9", "accuracy", "no-regression:x", ">= 0.5"):
        with pytest.raises(ConfigError, match="cannot read gate rule"):
            parse_gate(bad)


def test_gate_checks():
    means, deltas = {"json_fields": 0.92, "exact_match": 0.4}, {"json_fields": 0.3, "exact_match": -0.01}
    assert check_gate(parse_gate("json_fields>=0.9"), "m", means, deltas).passed
    failed = check_gate(parse_gate("exact_match>=0.5"), "m", means, deltas)
    assert not failed.passed and "exact_match = 0.4000 (needs >= 0.5)" in failed.detail
    regression = check_gate(parse_gate("no-regression"), "m", means, deltas)
    assert not regression.passed and "exact_match -0.0100" in regression.detail
    assert check_gate(parse_gate("no-regression:0.02"), "m", means, deltas).passed
    assert check_gate(parse_gate("json_fields.delta>=0.25"), "m", means, deltas).passed
    missing = check_gate(parse_gate("rouge_l>=0.1"), "m", means, deltas)
    assert not missing.passed and "not measured" in missing.detail


def test_gates_apply_to_every_candidate():
    base, good, bad = make_result("base", [0.5, 0.5]), make_result("good", [1.0, 1.0]), make_result("bad", [0.0, 0.5])
    comparisons = [compare_results(base, good), compare_results(base, bad)]
    results = check_gates(["no-regression"], [base, good, bad], comparisons)
    assert [(r.model, r.passed) for r in results] == [("good", True), ("bad", False)]


def test_report_escapes_user_text_and_loads_nothing(tmp_path):
    from tunery.evaluation.compare import Summary
    from tunery.evaluation.report import render_html, render_markdown

    base = make_result("base", [1.0, 0.0])
    tuned = make_result("tuned", [0.0, 0.0])
    tuned.rows[0]["prediction"] = '<img src="https://example.com/x.png"><script>alert(1)</script>'
    summary = Summary(models=[base, tuned], comparisons=[compare_results(base, tuned)], gates=[],
                      out_dir=str(tmp_path), report_path=str(tmp_path / "report.html"), tasks_path="t.jsonl",
                      loss_curves={"tuned": {"train": [[1, 2.0], [2, 1.5]], "val": [[2, 1.7]]}})
    html = render_html(summary)
    assert "<img" not in html and "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<polyline" in html  # the loss curve is drawn inline
    # The regressed example (r0: 1.0 -> 0.0) is listed before the tie (r1).
    assert html.index("base-0") < html.index("base-1")
    assert "- `r0` (t.jsonl:1): 1.00 → 0.00" in render_markdown(summary)


def test_report_charts_label_per_field_metrics_mark_short_curves_and_flag_cut_answers(tmp_path):
    """What a reader needs from the charts: every metric name legible (long ones shortened, whole on
    hover), the per-field JSON metrics charted beside the headline ones, each point of a short loss curve
    (a lone validation point included) marked, and answers that hit max_new_tokens flagged."""
    import re

    from tunery.evaluation.compare import Summary
    from tunery.evaluation.report import render_html, render_markdown

    def result(label, field_scores, truncated):
        rows = [{"id": f"r{i}", "location": f"t.jsonl:{i + 1}", "messages": [{"role": "user", "content": f"q{i}"}],
                 "reference": "ref", "prediction": f"{label}-{i}", "metrics": ["json_fields"],
                 "scores": {"json_fields": s, "json_field.category": s, "json_field.priority_and_urgency_level": 1.0},
                 "score": s, "truncated": cut} for i, (s, cut) in enumerate(zip(field_scores, truncated))]
        return EvalResult(model_ref=label, label=label, metrics=aggregate_scores(rows), rows=rows)

    base, tuned = result("base", [0.0, 1.0], [True, False]), result("tuned", [1.0, 1.0], [False, False])
    summary = Summary(models=[base, tuned], comparisons=[compare_results(base, tuned)], gates=[],
                      out_dir=str(tmp_path), report_path=str(tmp_path / "report.html"), tasks_path="t.jsonl",
                      loss_curves={"tuned": {"train": [[1, 2.0], [2, 1.5], [3, 1.2]], "val": [[3, 1.4]]}})
    html = render_html(summary)
    assert html.count("<h3>Per JSON field</h3>") == 2  # the metric bars and the delta bars
    labels = re.findall(r'<text[^>]*rotate\(-35[^>]*><title>([^<]*)</title>([^<]*)</text>', html)
    assert ("json_fields", "json_fields") in labels and ("category", "category") in labels
    assert ("priority_and_urgency_level", "priority_and_urgency_…") in labels
    assert html.count("<circle") == 4  # three training points and the one validation point
    assert "cut at max_new_tokens" in html and "<td class=num>1 of 2</td><td class=num>0 of 2</td>" in html
    assert "| answers cut at max_new_tokens | 1 of 2 | 0 of 2 |" in render_markdown(summary)
