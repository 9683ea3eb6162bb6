"""Evaluation on the real default model: its chat template, its end-of-turn stop and a right answer."""

from __future__ import annotations

import json

import pytest

from tunery.evaluation import evaluate_model


@pytest.mark.slow
def test_real_model_answers_and_stops_at_end_of_turn(default_model_dir, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    rows = [{"prompt": "What is the capital of France? Answer in one short sentence.", "reference": "Paris",
             "metric": ["contains", "exact_match"]}]
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_model(str(default_model_dir), tasks, max_new_tokens=32, out_dir=tmp_path / "out")
    # Measured: "The capital of France is Paris." (contains, but not an exact match).
    assert result.metric_means() == {"contains": 1.0, "exact_match": 0.0}, result.rows[0]["prediction"]
    # The answer ended on the model's own end-of-turn token, well before the limit.
    assert result.rows[0]["truncated"] is False and result.rows[0]["num_tokens"] < 32
    assert "<|im_end|>" not in (tmp_path / "out" / "predictions.jsonl").read_text()
