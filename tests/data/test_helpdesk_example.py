"""The bundled helpdesk dataset: reproducible from its generator, clean under `data check`, labels consistent."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from tunery.data import find_shared_examples, read_dataset

HELPDESK = Path(__file__).resolve().parents[2] / "examples" / "helpdesk"


def _load_generator():
    sys.path.insert(0, str(HELPDESK))
    try:
        spec = importlib.util.spec_from_file_location("helpdesk_generate", HELPDESK / "generate.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(HELPDESK))


def test_files_are_exactly_what_the_seeded_generator_writes():
    generator = _load_generator()
    splits = generator.generate()
    assert {name: len(rows) for name, rows in splits.items()} == {"train": 480, "validation": 60, "test": 60}
    for name, rows in splits.items():
        assert (HELPDESK / f"{name}.jsonl").read_text(encoding="utf-8") == generator.render(rows)
    assert generator.generate(seed=1)["train"] != splits["train"]


def test_dataset_checks_clean_and_splits_do_not_overlap():
    files = [HELPDESK / f"{name}.jsonl" for name in ("train", "validation", "test")]
    report = read_dataset(files)
    assert not report.problems, [str(p) for p in report.problems]
    assert len(report.conversations) == 600 and report.formats == ["chat"]
    by_file = {f: [c for c in report.conversations if c.location.file == str(f)] for f in files}
    assert not find_shared_examples(by_file[files[0]], by_file[files[1]] + by_file[files[2]])
    tickets = [c.turns[1].content for c in report.conversations]
    assert len(set(tickets)) == 600


def test_labels_are_json_with_allowed_values_and_follow_the_catalog():
    generator = _load_generator()
    catalog = sys.modules.get("catalog")
    assert catalog is not None
    report = read_dataset(HELPDESK / "train.jsonl")
    nouns = {issue.noun: issue for issue in catalog.ISSUES}
    priorities = set()
    for conv in report.conversations:
        roles = [t.role for t in conv.turns]
        assert roles == ["system", "user", "assistant"] and conv.turns[0].content == catalog.SYSTEM_PROMPT
        label = json.loads(conv.turns[2].content)
        assert list(label) == ["category", "priority", "team", "summary"]
        issue = nouns[label["summary"].split(" for ")[0]]
        assert (label["category"], label["team"]) == (issue.category, issue.team)
        assert label["priority"] in catalog.PRIORITIES and label["summary"].endswith(".")
        priorities.add(label["priority"])
    assert priorities == set(catalog.PRIORITIES)
    assert generator.SYSTEM_PROMPT == catalog.SYSTEM_PROMPT
