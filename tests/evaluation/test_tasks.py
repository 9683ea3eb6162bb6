"""Task files: both row shapes, the chat-split shortcut, and located errors for bad rows."""

from __future__ import annotations

import json

import pytest

from tunery.errors import DataError
from tunery.evaluation.metrics import KNOWN_METRICS
from tunery.evaluation.tasks import load_tasks


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_prompt_and_messages_rows(tmp_path):
    path = write_rows(tmp_path / "t.jsonl", [
        {"prompt": "Capital of France?", "reference": "Paris", "id": "q1"},
        {"messages": [{"role": "system", "content": "JSON only"}, {"role": "user", "content": "VPN down"}],
         "reference": {"category": "network"}, "metric": ["json_fields"]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    ])
    rows = load_tasks(path, KNOWN_METRICS)
    assert [r.id for r in rows] == ["q1", "line-2", "line-3"]
    assert rows[0].messages == ({"role": "user", "content": "Capital of France?"},)
    assert json.loads(rows[1].reference) == {"category": "network"}
    assert rows[1].metrics == ("json_fields",)
    # A chat row without a reference: its last assistant message is the reference.
    assert rows[2].reference == "Hello!" and rows[2].messages == ({"role": "user", "content": "Hi"},)
    assert str(rows[2].location).endswith("t.jsonl:3")


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    path = write_rows(tmp_path / "t.jsonl", [
        {"prompt": "ok", "reference": "x"},
        "{not json",
        {"prompt": "no reference"},
        {"prompt": "x", "reference": "y", "metric": "bleu"},
        {"messages": [{"role": "robot", "content": "x"}], "reference": "y"},
        {"prompt": "x", "messages": [], "reference": "y"},
        {"prompt": "x", "reference": "y", "refrence": "typo"},
    ])
    with pytest.raises(DataError) as info:
        load_tasks(path, KNOWN_METRICS)
    problems = info.value.problems
    assert [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in problems] == ["2", "3", "4", "5", "6", "7"]
    assert "not valid JSON" in problems[0]
    assert '"reference" is missing' in problems[1]
    assert "unknown metric 'bleu'" in problems[2]
    assert "messages[0].role" in problems[3]
    assert "exactly one of" in problems[4]
    assert "refrence" in problems[5]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="no rows"):
        load_tasks(tmp_path / "empty.jsonl")


def test_duplicate_ids_are_refused(tmp_path):
    path = write_rows(tmp_path / "t.jsonl", [{"prompt": "a", "reference": "x", "id": "same"},
                                             {"prompt": "b", "reference": "y", "id": "same"}])
    with pytest.raises(DataError, match="t.jsonl:2: duplicate id 'same'"):
        load_tasks(path)
