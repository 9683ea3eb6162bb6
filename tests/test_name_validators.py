"""Every validator of a user-given name refuses "name\\n": `$` matches before a final newline, so
each one uses fullmatch; and no regex literal in tunery ends in `$` without a reason listed here."""

from __future__ import annotations

import ast
import re

import pydantic
import pytest

import tunery
from tests.test_architecture import PACKAGE
from tunery.data.problems import ProblemLog
from tunery.data.tool_format import check_tools
from tunery.errors import ConfigError
from tunery.models.resolve import looks_like_hub_id
from tunery.paths import check_name
from tunery.platform import registry
from tunery.platform.job_spec import JobRequest
from tunery.platform.models import CHECKPOINT
from tunery.platform.pii import _user_detector
from tunery.server.protocol import FunctionDefinition, JsonSchemaFormat

# Patterns that end in `$` on purpose: (file, the pattern's start, why it is not a name check).
ALLOWED_DOLLAR = {
    ("evaluation/gates.py", r"^\s*([A-Za-z_]"): "a gate rule; trailing whitespace (a newline too) is allowed",
    ("evaluation/gates.py", r"^\s*no-regression"): "a gate rule; trailing whitespace is allowed",
    ("evaluation/metrics.py", r"^```"): "strips a code fence from a model's answer",
    ("data/augment.py", r"^(?P<head>"): "rewords a question; not a check",
    ("server/protocol.py", r"^[A-Za-z0-9_-]+$"): "pydantic's Rust regex: `$` is the end of the text (tested below)",
}


def test_names_ending_in_a_newline_are_refused_everywhere(tmp_path):
    with pytest.raises(ConfigError):
        check_name("run\n", "run name")  # run folders, adapters, served model names
    for bad in ("helpdesk\n", "help desk", "a/b"):
        with pytest.raises(ConfigError):
            registry.register_run(None, tmp_path, bad)  # registry model names
    with pytest.raises(ConfigError):
        registry.promote(None, "helpdesk@1", to="production\n")  # alias names
    with pytest.raises(ConfigError):
        registry.parse_ref("helpdesk@can\ndidate")
    assert registry.parse_ref("helpdesk@2\n") == ("helpdesk", "2")  # surrounding space is trimmed, never kept
    with pytest.raises(pydantic.ValidationError):
        JobRequest(model="m", training_file="file-1", suffix="helpdesk\n")  # job suffixes
    with pytest.raises(ConfigError):
        _user_detector("EMPLOYEE_ID\n", r"EMP-\d+", "pii.yaml")  # PII pattern names
    log = ProblemLog()
    assert check_tools([{"type": "function", "function": {"name": "lookup\n"}}], log) is None  # tool names
    assert log.errors[0].code == "invalid_tool"
    for model in (JsonSchemaFormat, FunctionDefinition):  # request fields
        with pytest.raises(pydantic.ValidationError):
            model(name="answer\n")
        assert model(name="answer").name == "answer"
    assert CHECKPOINT.fullmatch("ft:base:s:abc:ckpt-step-3\n") is None  # checkpoint model ids
    assert not looks_like_hub_id("org/model\n") and not looks_like_hub_id("org/model junk")
    assert looks_like_hub_id("HuggingFaceTB/SmolLM2-135M")


def regex_literals(tree: ast.AST):
    """String literals passed to re.compile/match/fullmatch/search or as pydantic's `pattern=`."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in ("compile", "match", "fullmatch", "search") \
                and isinstance(func.value, ast.Name) and func.value.id == "re" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield first.value
        for keyword in node.keywords:
            if keyword.arg == "pattern" and isinstance(keyword.value, ast.Constant):
                yield keyword.value.value


def test_no_regex_ends_in_dollar_without_a_reason():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = str(path.relative_to(PACKAGE))
        for pattern in regex_literals(ast.parse(path.read_text())):
            if pattern.endswith("$") and not pattern.endswith("\\$"):
                if not any(relative == f and pattern.startswith(start) for f, start in ALLOWED_DOLLAR):
                    found.append(f"{relative}: {pattern}")
    assert not found, "use fullmatch (or \\Z) for these, or list why `$` is right:\n" + "\n".join(found)
    assert re.match(r"[a-z]+$", "name\n")  # the trap itself, so this test keeps its reason
    assert tunery.__version__
