"""Compare models on one task file: paired deltas with bootstrap intervals, wins/losses, gates, report.

`compare_models` is the library entry point behind `tunery compare` and the end of `tunery demo`.
The first model is the baseline; every later one is a candidate compared against it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ConfigError
from tunery.evaluation.curves import read_loss_curves
from tunery.evaluation.evaluate import DEFAULT_MAX_NEW_TOKENS, EvalResult, evaluate_model, label_for
from tunery.evaluation.gates import GateResult, check_gate, parse_gate
from tunery.evaluation.judge import JudgeSpec
from tunery.evaluation.metrics import KNOWN_METRICS
from tunery.evaluation.statistics import bootstrap_delta, count_outcomes
from tunery.evaluation.tasks import load_tasks
from tunery.evaluation.verdict import plain_verdict
from tunery.paths import GATES_FILE


@dataclass
class Comparison:
    """One candidate against the baseline."""

    baseline: str
    candidate: str
    deltas: dict[str, dict]
    outcomes: dict[str, int]
    regressions: list[dict]
    improvements: list[dict]

    def as_dict(self) -> dict:
        return {"baseline": self.baseline, "candidate": self.candidate, "deltas": self.deltas,
                "outcomes": self.outcomes, "regressions": self.regressions, "improvements": self.improvements}


@dataclass
class Summary:
    """Everything a comparison found, and where its report lives."""

    models: list[EvalResult]
    comparisons: list[Comparison]
    gates: list[GateResult]
    out_dir: str
    report_path: str
    tasks_path: str
    loss_curves: dict[str, dict] = field(default_factory=dict)
    verdict: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def headline(self) -> dict[str, dict[str, float]]:
        """label -> metric -> mean, for the metrics every row reports (not per-field breakdowns)."""
        return {m.label: {k: v["mean"] for k, v in m.metrics.items() if not k.startswith("json_field.")}
                for m in self.models}

    def headline_lines(self) -> list[str]:
        """One line per candidate and main metric, for a terminal: means, delta, interval, outcomes."""
        lines = []
        for comparison in self.comparisons:
            for name, d in comparison.deltas.items():
                if name.startswith("json_field.") or name == "json_fields_all":
                    continue
                lines.append(f"{name}: {comparison.baseline} {d['baseline']:.3f} -> {comparison.candidate} "
                             f"{d['candidate']:.3f} ({d['delta']:+.3f}, 95% CI [{d['low']:+.3f}, {d['high']:+.3f}])")
            o = comparison.outcomes
            lines.append(f"{comparison.candidate} vs {comparison.baseline}: {o['wins']} wins, {o['losses']} losses, "
                         f"{o['ties']} ties")
        lines.extend(f"gate {g.rule} ({g.model}): {'pass' if g.passed else 'FAIL'} - {g.detail}" for g in self.gates)
        return lines

    def as_dict(self) -> dict:
        return {"tasks": self.tasks_path, "report": self.report_path, "passed": self.passed,
                "models": [m.as_dict() for m in self.models],
                "comparisons": [c.as_dict() for c in self.comparisons],
                "gates": [g.as_dict() for g in self.gates], "loss_curves": self.loss_curves,
                "verdict": self.verdict}


def unique_labels(model_refs: list[str]) -> list[str]:
    labels: list[str] = []
    seen: dict[str, int] = {}
    for ref in model_refs:
        base = label_for(ref)
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return labels


def compare_results(baseline: EvalResult, candidate: EvalResult, *, seed: int = 0) -> Comparison:
    """Paired deltas per metric, wins/losses/ties on each row's headline score, regressions first."""
    base_rows = {row["id"]: row for row in baseline.rows}
    paired = [(base_rows[row["id"]], row) for row in candidate.rows if row["id"] in base_rows]
    deltas = {}
    for name in sorted(set(baseline.metrics) & set(candidate.metrics)):
        pairs = [(b["scores"][name], c["scores"][name]) for b, c in paired
                 if name in b["scores"] and name in c["scores"]]
        interval = bootstrap_delta([p[0] for p in pairs], [p[1] for p in pairs], seed=seed)
        deltas[name] = {"baseline": baseline.metrics[name]["mean"], "candidate": candidate.metrics[name]["mean"],
                        "delta": interval.value, "low": interval.low, "high": interval.high, "n": len(pairs)}
    scored = [(b, c) for b, c in paired if b["score"] is not None and c["score"] is not None]
    outcomes = count_outcomes([b["score"] for b, _ in scored], [c["score"] for _, c in scored])
    changes = [side_by_side(b, c) for b, c in scored]
    regressions = sorted((x for x in changes if x["delta"] < -1e-9), key=lambda x: (x["delta"], x["id"]))
    improvements = sorted((x for x in changes if x["delta"] > 1e-9), key=lambda x: (-x["delta"], x["id"]))
    return Comparison(baseline.label, candidate.label, deltas, outcomes, regressions, improvements)


def side_by_side(base_row: dict, cand_row: dict) -> dict:
    prompt = base_row["messages"][-1]["content"] if base_row["messages"] else ""
    return {"id": base_row["id"], "location": base_row["location"], "prompt": prompt,
            "reference": base_row["reference"], "baseline": base_row["prediction"],
            "candidate": cand_row["prediction"], "baseline_score": base_row["score"],
            "candidate_score": cand_row["score"], "delta": cand_row["score"] - base_row["score"],
            "baseline_truncated": bool(base_row.get("truncated")), "candidate_truncated": bool(cand_row.get("truncated"))}


def check_gates(gate_texts: list[str], models: list[EvalResult], comparisons: list[Comparison]) -> list[GateResult]:
    gates = [parse_gate(text) for text in gate_texts]
    candidates = models[1:] or models[:1]
    results = []
    for candidate in candidates:
        comparison = next((c for c in comparisons if c.candidate == candidate.label), None)
        deltas = {name: d["delta"] for name, d in comparison.deltas.items()} if comparison else {}
        for gate in gates:
            results.append(check_gate(gate, candidate.label, candidate.metric_means(), deltas))
    return results


def record_gates(summary: Summary, weights: str | None) -> None:
    """Append to each gated candidate run's gates.jsonl: the weights it was scored with and the verdict
    (export copies the latest into its manifest; a registry reads it)."""
    for model in summary.models[1:] or summary.models[:1]:
        results = [g for g in summary.gates if g.model == model.label]
        if not model.run_dir or not results:
            continue
        entry = {"time": int(time.time()), "weights": weights or "full", "decode": model.settings.get("decode"),
                 "passed": all(g.passed for g in results), "rules": [g.rule for g in results],
                 "baseline": summary.models[0].model_ref, "tasks": summary.tasks_path,
                 "summary": str(Path(summary.out_dir) / "summary.json")}
        with open(Path(model.run_dir) / GATES_FILE, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")


def compare_models(model_refs: list[str], tasks_path: str | Path, out_dir: str | Path, *,
                   gates: list[str] | tuple[str, ...] = (), metrics: list[str] | None = None,
                   batch_size: int = 8, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, dtype: str = "auto",
                   judge: JudgeSpec | None = None, seed: int = 0,
                   loss_data: str | Path | None = None,
                   json_fields: list[str] | tuple[str, ...] | None = None, limit: int | None = None,
                   weights: str | None = None) -> Summary:
    """Evaluate every model on the same tasks, compare each to the first, write the report.

    Writes `report.html`, `summary.json`, `summary.md` and one `<label>/predictions.jsonl` per
    model into `out_dir`. Gate failures are reported in the Summary (`passed`), not raised.
    `loss_data`: also measure each model's loss and perplexity on this dataset file.
    `json_fields`: the reference keys the `json_fields` metric compares (default: all).
    `limit`: use only the first `limit` rows of the task file (a quick look on a slow machine).
    `weights`: generate through the serving engine with these weights (see `evaluate_model`); each
    model's `settings` in summary.json record the weights and decode backend it was scored with.
    """
    from tunery.evaluation.report import write_reports

    if not model_refs:
        raise ConfigError("compare needs at least one model", code="no_models")
    for text in gates:
        parse_gate(text)  # malformed rules fail before hours of generation
    examples = load_tasks(tasks_path, KNOWN_METRICS)[:limit]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = []
    for ref, label in zip(model_refs, unique_labels([str(r) for r in model_refs])):
        models.append(evaluate_model(str(ref), examples, metrics=metrics, out_dir=out / label, label=label,
                                     batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=dtype,
                                     judge=judge, loss_data=loss_data, json_fields=json_fields, weights=weights))
    comparisons = [compare_results(models[0], candidate, seed=seed) for candidate in models[1:]]
    summary = Summary(models=models, comparisons=comparisons, gates=check_gates(list(gates), models, comparisons),
                      out_dir=str(out), report_path=str(out / "report.html"), tasks_path=str(tasks_path),
                      loss_curves={m.label: read_loss_curves(m.run_dir) for m in models if m.run_dir},
                      verdict=plain_verdict(models, seed=seed))
    write_reports(summary, out)
    record_gates(summary, weights)
    (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    return summary
