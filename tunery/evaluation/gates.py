"""Promotion gates: rules a candidate model must pass, checked against a comparison's numbers.

Rules: `METRIC>=X` (also `>`, `<=`, `<`, `==`) on the candidate's mean, `METRIC.delta>=X` on its
mean minus the baseline's, and `no-regression` (or `no-regression:TOLERANCE`): no metric's mean
drops below the baseline's by more than the tolerance (default 0). Knows nothing of models.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

from tunery.errors import ConfigError

OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, ">": operator.gt, "<": operator.lt}
RULE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.\-]*?)(\.delta)?\s*(>=|<=|==|>|<)\s*(-?[0-9]*\.?[0-9]+)\s*$")
NO_REGRESSION = re.compile(r"^\s*no-regression(?::\s*([0-9]*\.?[0-9]+))?\s*$")


@dataclass(frozen=True)
class Gate:
    """A parsed rule. `kind` is "threshold", "delta" or "no_regression"."""

    text: str
    kind: str
    metric: str = ""
    op: str = ""
    value: float = 0.0


@dataclass(frozen=True)
class GateResult:
    rule: str
    model: str
    passed: bool
    detail: str

    def as_dict(self) -> dict:
        return {"rule": self.rule, "model": self.model, "passed": self.passed, "detail": self.detail}


def parse_gate(text: str) -> Gate:
    """Parse one rule; a malformed rule is a ConfigError before any model is loaded."""
    match = NO_REGRESSION.match(text)
    if match:
        return Gate(text=text.strip(), kind="no_regression", value=float(match.group(1) or 0.0))
    match = RULE.match(text)
    if not match:
        raise ConfigError(f"cannot read gate rule {text!r}", code="invalid_gate",
                          hint='write METRIC>=NUMBER (e.g. "json_fields>=0.9"), METRIC.delta>=NUMBER, '
                          'or "no-regression[:TOLERANCE]"')
    metric, delta, op, value = match.groups()
    return Gate(text=text.strip(), kind="delta" if delta else "threshold", metric=metric, op=op,
                value=float(value))


def check_gate(gate: Gate, model: str, means: dict[str, float], deltas: dict[str, float]) -> GateResult:
    """Check one rule for one candidate given its metric means and its deltas to the baseline."""
    if gate.kind == "no_regression":
        dropped = {name: d for name, d in deltas.items() if d < -gate.value - 1e-12}
        if dropped:
            worst = ", ".join(f"{name} {d:+.4f}" for name, d in sorted(dropped.items(), key=lambda kv: kv[1]))
            return GateResult(gate.text, model, False, f"regressed: {worst}")
        return GateResult(gate.text, model, True, f"no metric dropped more than {gate.value:g}")
    source = deltas if gate.kind == "delta" else means
    what = f"{gate.metric}{'.delta' if gate.kind == 'delta' else ''}"
    if gate.metric not in source:
        known = ", ".join(sorted(source)) or "none"
        return GateResult(gate.text, model, False, f"{what} was not measured (measured: {known})")
    actual = source[gate.metric]
    passed = bool(OPERATORS[gate.op](actual, gate.value))
    return GateResult(gate.text, model, passed, f"{what} = {actual:.4f} (needs {gate.op} {gate.value:g})")
