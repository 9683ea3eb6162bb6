"""Evaluate one model on a task file: generate, score, and save every prediction beside the scores.

`evaluate_model` is the library entry point behind `tunery eval`; `compare.py` calls it once per
model. Writes `predictions.jsonl` (one row per example) and `scores.json` into the output folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ConfigError, EvaluationError
from tunery.evaluation.judge import JudgeSpec, judge_predictions
from tunery.evaluation.metrics import KNOWN_METRICS, check_reference, default_metrics, score_prediction
from tunery.evaluation.retrieved import usage_summary
from tunery.evaluation.statistics import bootstrap_mean
from tunery.evaluation.tasks import TaskExample, load_tasks
from tunery.models import load_model, resolve_model
from tunery.safeio import open_private

DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class EvalResult:
    """One model's scores on a task file: per-metric means with intervals, and every row."""

    model_ref: str
    label: str
    metrics: dict[str, dict]
    rows: list[dict]
    run_dir: str | None = None
    out_dir: str | None = None
    loss: dict | None = None
    settings: dict = field(default_factory=dict)
    usage: dict = field(default_factory=dict)  # latency, prompt tokens, retrieval hit rate (retrieved.py)

    def metric_means(self) -> dict[str, float]:
        return {name: stats["mean"] for name, stats in self.metrics.items()}

    def as_dict(self) -> dict:
        return {"model": self.model_ref, "label": self.label, "run_dir": self.run_dir,
                "metrics": self.metrics, "loss": self.loss, "settings": self.settings, "usage": self.usage,
                "by_task": self.by_task(), "num_examples": len(self.rows)}

    def by_task(self) -> dict[str, dict]:
        """Per-metric means and intervals per task, for rows whose `meta` names a `task`."""
        groups: dict[str, list[dict]] = {}
        for row in self.rows:
            task = (row.get("meta") or {}).get("task")
            if isinstance(task, str):
                groups.setdefault(task, []).append(row)
        return {task: aggregate_scores(rows) for task, rows in sorted(groups.items())}


def plan_metrics(examples: list[TaskExample], metrics: list[str] | None,
                 json_fields: tuple[str, ...] | None = None) -> list[tuple[str, ...]]:
    """The metrics of each row: its own `metric` field, else `--metric`, else by reference shape."""
    for name in metrics or []:
        if name not in KNOWN_METRICS:
            raise ConfigError(f"unknown metric {name!r}", code="unknown_metric",
                              hint=f"known metrics: {', '.join(sorted(KNOWN_METRICS))}")
    plan = []
    for example in examples:
        chosen = example.metrics or tuple(metrics or ()) or default_metrics(example.reference)
        for name in chosen:
            check_reference(name, example.reference, str(example.location))
        if json_fields and "json_fields" in chosen and not set(json_fields) & set(json.loads(example.reference)):
            raise EvaluationError(f"{example.location}: the reference has none of the fields "
                                  f"{', '.join(json_fields)}", code="invalid_reference",
                                  hint="check --fields against the reference's keys")
        plan.append(chosen)
    return plan


def headline_score(scores: dict[str, float], chosen: tuple[str, ...]) -> float | None:
    """One number per row for wins and losses: the mean of its metrics' main scores."""
    values = [scores[name] for name in chosen if name in scores]
    return sum(values) / len(values) if values else None


def aggregate_scores(rows: list[dict], seed: int = 0) -> dict[str, dict]:
    """Mean and bootstrap interval of every score name over the rows that have it."""
    names = sorted({name for row in rows for name in row["scores"]})
    result = {}
    for name in names:
        values = [row["scores"][name] for row in rows if name in row["scores"]]
        interval = bootstrap_mean(values, seed=seed)
        result[name] = {"mean": interval.value, "low": interval.low, "high": interval.high, "n": len(values)}
    return result


def label_for(model_ref: str) -> str:
    """A short, path-safe label for a model reference (the folder or file name; `+rag` when it retrieves)."""
    if "+rag:" in str(model_ref):
        return label_for(str(model_ref).rpartition("+rag:")[0])[:60] + "+rag"
    name = Path(str(model_ref).rstrip("/")).name or str(model_ref)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    return name[:64]


def evaluate_model(model_ref: str, tasks: str | Path | list[TaskExample], *, metrics: list[str] | None = None,
                   out_dir: str | Path | None = None, label: str | None = None, batch_size: int = 8,
                   max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, dtype: str = "auto",
                   judge: JudgeSpec | None = None, loss_data: str | Path | None = None,
                   json_fields: list[str] | tuple[str, ...] | None = None, weights: str | None = None) -> EvalResult:
    """Generate greedily for every task row, score it, and (with `out_dir`) save it all.

    `json_fields`: the reference keys the `json_fields` metric compares (default: all of them).
    `weights`: `full`, `int8` or `int4` generates through the serving engine with those weights (what
    `tunery serve --weights` answers); None uses Hugging Face `generate` on the model's own precision.
    """
    from tunery.evaluation.generation import generate_texts

    examples = tasks if isinstance(tasks, list) else load_tasks(tasks, KNOWN_METRICS)
    json_fields = tuple(json_fields) if json_fields else None
    plan = plan_metrics(examples, metrics, json_fields)
    needs_judge = any("judge" in chosen for chosen in plan)
    if needs_judge and judge is None:
        raise ConfigError("metric 'judge' needs a judge model", code="judge_missing",
                          hint="pass --judge MODEL (and optionally --rubric TEXT or --rubric @file)")
    loss_conversations = None
    if loss_data is not None:
        from tunery.evaluation.perplexity import read_loss_data

        loss_conversations = read_loss_data(loss_data)
    if weights is not None:
        resolved, generations, loss, decode = _evaluate_served(model_ref, examples, weights=weights, dtype=dtype,
                                                               batch_size=batch_size, max_new_tokens=max_new_tokens,
                                                               loss_data=loss_data, conversations=loss_conversations)
        retrieval = None
    else:
        resolved, decode = resolve_model(model_ref), "generate"
        model, tokenizer = load_model(resolved, dtype=dtype)
        prompts, encoded, retrieval = [list(ex.messages) for ex in examples], None, None
        if resolved.rag_index is not None:
            from tunery.evaluation.retrieved import retrieval_prompts

            prompts, encoded, retrieval = retrieval_prompts(resolved.rag_index, str(model_ref), examples, model,
                                                            tokenizer, max_new_tokens=max_new_tokens)
        generations = generate_texts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     encoded=encoded)
        loss = None
        if loss_data is not None:
            from tunery.evaluation.perplexity import evaluate_loss

            loss = evaluate_loss(model, tokenizer, loss_data, conversations=loss_conversations)
        del model
    rows = build_rows(examples, plan, [g.text for g in generations], json_fields)
    for index, (row, generation) in enumerate(zip(rows, generations)):
        row["num_tokens"], row["truncated"] = generation.num_tokens, generation.truncated
        row["prompt_tokens"] = generation.prompt_tokens
        row["latency_ms"] = round(generation.latency_s * 1000, 1)
        if retrieval is not None:
            row["retrieval"] = retrieval[index]
            row["latency_ms"] = round(row["latency_ms"] + retrieval[index]["retrieval_ms"], 1)
    if needs_judge and judge is not None:  # checked above: a judge task without a judge was refused
        add_judge_scores(rows, examples, plan, judge, batch_size=batch_size, dtype=dtype)
    result = EvalResult(model_ref=str(model_ref), label=label or label_for(model_ref),
                        metrics=aggregate_scores(rows), rows=rows,
                        run_dir=str(resolved.run_dir) if resolved.run_dir else None, loss=loss,
                        settings={"max_new_tokens": max_new_tokens, "batch_size": batch_size, "dtype": dtype,
                                  "weights": weights or "full", "decode": decode, "decoding": "greedy",
                                  "judge": judge.model_ref if judge else None,
                                  "json_fields": list(json_fields) if json_fields else None,
                                  "rag_index": str(resolved.rag_index) if resolved.rag_index else None},
                        usage=usage_summary(rows))
    if out_dir is not None:
        save_result(result, Path(out_dir))
    return result


def _evaluate_served(model_ref: str, examples: list[TaskExample], *, weights: str, dtype: str, batch_size: int,
                     max_new_tokens: int, loss_data, conversations):
    """(resolved, generations, loss, decode backend) through the serving engine with `weights`."""
    from tunery.evaluation.served import load_served, serve_texts, served_model

    if resolve_model(model_ref).rag_index is not None:
        raise ConfigError("--weights does not take a +rag: model yet", code="invalid_option",
                          hint="evaluate MODEL+rag:INDEX without --weights (Hugging Face generate)")
    loaded = load_served(model_ref, weights=weights, dtype=dtype, batch_size=batch_size)
    generations = serve_texts(loaded, [list(ex.messages) for ex in examples], max_new_tokens=max_new_tokens)
    loss = None
    if loss_data is not None:
        from tunery.evaluation.perplexity import evaluate_loss

        with served_model(loaded) as model:
            loss = evaluate_loss(model, loaded.tokenizer, loss_data, conversations=conversations)
    return loaded.resolved, generations, loss, loaded.engine.backend.name


def evaluate_model_loss(model_ref: str, data_path: str | Path, *, dtype: str = "auto",
                        batch_size: int = 8) -> dict:
    """Loss and perplexity of a model on a dataset file, without any generation."""
    from tunery.evaluation.perplexity import evaluate_loss

    model, tokenizer = load_model(model_ref, dtype=dtype)
    return evaluate_loss(model, tokenizer, data_path, batch_size=batch_size)


def build_rows(examples: list[TaskExample], plan: list[tuple[str, ...]], predictions: list[str],
               json_fields: tuple[str, ...] | None = None) -> list[dict]:
    rows = []
    for example, chosen, prediction in zip(examples, plan, predictions):
        scores = score_prediction(prediction, example.reference, chosen, json_fields)
        rows.append({"id": example.id, "location": str(example.location), "messages": list(example.messages),
                     "reference": example.reference, "prediction": prediction, "metrics": list(chosen),
                     "scores": scores, "score": headline_score(scores, chosen)})
        if example.meta:
            rows[-1]["meta"] = example.meta
    return rows


def add_judge_scores(rows, examples, plan, judge: JudgeSpec, *, batch_size: int, dtype: str) -> None:
    wanted = [i for i, chosen in enumerate(plan) if "judge" in chosen]
    verdicts = judge_predictions(judge, [examples[i] for i in wanted], [rows[i]["prediction"] for i in wanted],
                                 batch_size=batch_size, dtype=dtype)
    for index, verdict in zip(wanted, verdicts):
        rows[index]["scores"]["judge"] = float(verdict.passed)
        rows[index]["judge_reason"] = verdict.reason
        rows[index]["score"] = headline_score(rows[index]["scores"], plan[index])


def save_result(result: EvalResult, out_dir: Path) -> None:
    """predictions.jsonl (every row with its prediction and scores) and scores.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open_private(out_dir / "predictions.jsonl", "w", encoding="utf-8") as handle:  # prompts and answers
        for row in result.rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out_dir / "scores.json").write_text(json.dumps(result.as_dict(), indent=2, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    result.out_dir = str(out_dir)
