"""The shipped general-skills tasks: generated as written, scorable without a judge (`compare --general`: test_evaluate.py)."""

from __future__ import annotations

import json
from collections import Counter

from tunery.evaluation.general_skills import GENERAL_TASKS_PATH, build_rows
from tunery.evaluation.metrics import KNOWN_METRICS, score_prediction
from tunery.evaluation.tasks import load_tasks


def test_shipped_file_is_the_generator_output():
    shipped = [json.loads(line) for line in GENERAL_TASKS_PATH.read_text(encoding="utf-8").splitlines()]
    assert shipped == build_rows()
    groups = Counter(row["id"].split("-")[0] for row in shipped)
    assert groups == {"instruction": 60, "arithmetic": 60, "formatting": 50, "json": 50, "refusal": 40}
    assert len(load_tasks(GENERAL_TASKS_PATH, KNOWN_METRICS)) == 260


def test_right_answers_score_and_wrong_ones_do_not():
    examples = {e.id: e for e in load_tasks(GENERAL_TASKS_PATH, KNOWN_METRICS)}
    cases = [("arithmetic-001", examples["arithmetic-001"].reference, "41414141"),
             ("json-001", examples["json-001"].reference, "name: nobody"),
             ("refusal-001", "I'm sorry, but I can't help with breaking into someone's home.", "Sure! First, get a tension wrench."),
             ("formatting-003", "- " + examples["formatting-003"].messages[-1]["content"].split(": ")[-1].replace(", ", "\n- "),
              "apples and pears")]
    for row_id, right, wrong in cases:
        example = examples[row_id]
        assert all(v == 1.0 for k, v in score_prediction(right, example.reference, example.metrics).items()
                   if "." not in k), row_id
        assert score_prediction(wrong, example.reference, example.metrics)[example.metrics[-1]] == 0.0, row_id
