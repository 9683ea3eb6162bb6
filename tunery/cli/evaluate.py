"""`tunery eval` and `tunery compare`: parse options, call one library function, render.

A failed gate exits with code 3 (errors exit 1 or 2), so scripts and the lifecycle can tell
"the candidate is worse" from "the comparison could not run".
"""

from __future__ import annotations

from pathlib import Path

import typer

from tunery.cli import app
from tunery.cli.output import console, err_console, handle_errors, print_json

GATE_FAILED_EXIT = 3

MetricOpt = typer.Option(None, "--metric", "-m", help="Metric for rows that name none (repeatable): exact_match, "
                         "contains, token_f1, rouge_l, json_valid, json_fields, regex, judge. Default: by reference "
                         "shape (JSON object: json_valid+json_fields; text: exact_match+token_f1+rouge_l).")
BatchOpt = typer.Option(8, "--batch-size", min=1, help="Prompts generated together.")
MaxTokensOpt = typer.Option(256, "--max-new-tokens", min=1, help="Longest completion, in tokens.")
DtypeOpt = typer.Option("auto", "--dtype", help="Weights precision: auto, bf16 or fp32.")
JudgeOpt = typer.Option(None, "--judge", help="Local judge model for the 'judge' metric (any model reference).")
RubricOpt = typer.Option(None, "--rubric", help="Judge rubric text, or @FILE to read it from a file.")
FieldsOpt = typer.Option(None, "--fields", help="Comma-separated reference keys json_fields compares (default: all), "
                         "e.g. category,priority,team to leave out a free-text summary.")


LimitOpt = typer.Option(None, "--limit", min=1, help="Use only the first N rows of the task file.")


def split_fields(fields: str | None) -> list[str] | None:
    return [f.strip() for f in fields.split(",") if f.strip()] if fields else None


def judge_spec(judge: str | None, rubric: str | None):
    from tunery.evaluation.judge import JudgeSpec, read_rubric

    return JudgeSpec(model_ref=judge, rubric=read_rubric(rubric)) if judge else None


def check_dtype(dtype: str) -> str:
    from tunery.errors import ConfigError

    if dtype not in {"auto", "bf16", "fp32"}:
        raise ConfigError(f"--dtype must be auto, bf16 or fp32, got {dtype!r}", code="invalid_option")
    return dtype


@app.command("eval")
@handle_errors
def eval_command(
    model: str = typer.Argument(..., help="Model reference: built-in alias, folder, .gguf file or run directory; "
                                "add +rag:INDEX_DIR to answer from retrieved documents."),
    tasks: Path = typer.Option(None, "--tasks", "-t", help="JSONL task file: prompt or messages, and reference."),
    metric: list[str] = MetricOpt,
    out: Path = typer.Option(None, "--out", "-o", help="Folder for predictions.jsonl and scores.json."),
    data: Path = typer.Option(None, "--data", help="Also report loss and perplexity on this dataset file."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    batch_size: int = BatchOpt,
    max_new_tokens: int = MaxTokensOpt,
    dtype: str = DtypeOpt,
    judge: str = JudgeOpt,
    rubric: str = RubricOpt,
    fields: str = FieldsOpt,
    limit: int = LimitOpt,
) -> None:
    """Score a model on a task file (greedy generation, saved predictions), and/or its loss on a dataset."""
    from tunery.errors import ConfigError
    from tunery.evaluation.evaluate import evaluate_model, evaluate_model_loss

    if tasks is None and data is None:
        raise ConfigError("nothing to evaluate", code="invalid_option", hint="pass --tasks FILE and/or --data FILE")
    if tasks is None:
        loss = evaluate_model_loss(model, data, dtype=check_dtype(dtype), batch_size=batch_size)
        if as_json:
            print_json({"model": model, "metrics": {}, "loss": loss})
        else:
            console.print(f"loss {loss['loss']:.4f}  perplexity {loss['perplexity']:.3f}  "
                          f"({loss['num_tokens']} tokens, {loss['num_examples']} examples)")
        return
    from tunery.evaluation.metrics import KNOWN_METRICS
    from tunery.evaluation.tasks import load_tasks

    result = evaluate_model(model, load_tasks(tasks, KNOWN_METRICS)[:limit], metrics=metric or None, out_dir=out,
                            batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=check_dtype(dtype),
                            judge=judge_spec(judge, rubric), loss_data=data, json_fields=split_fields(fields))
    if as_json:
        print_json({"model": result.model_ref, "metrics": result.metric_means(), "intervals": result.metrics,
                    "loss": result.loss, "num_examples": len(result.rows), "out": result.out_dir})
        return
    from rich.table import Table

    table = Table("metric", "mean", "95% CI", "n")
    for name, stats in result.metrics.items():
        table.add_row(name, f"{stats['mean']:.3f}", f"[{stats['low']:.3f}, {stats['high']:.3f}]", str(stats["n"]))
    console.print(table)
    if result.loss:
        console.print(f"loss {result.loss['loss']:.4f}  perplexity {result.loss['perplexity']:.3f}")
    if result.out_dir:
        console.print(f"predictions: {Path(result.out_dir) / 'predictions.jsonl'}")


@app.command("compare")
@handle_errors
def compare_command(
    models: list[str] = typer.Argument(..., help="Two or more model references; the first is the baseline. "
                                       "MODEL+rag:INDEX_DIR answers from retrieved documents, e.g. base, base+rag, "
                                       "tuned, tuned+rag side by side."),
    tasks: Path = typer.Option(None, "--tasks", "-t", help="JSONL task file."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for report.html, summary.json, summary.md."),
    gate: list[str] = typer.Option(None, "--gate", "-g", help='Rule the candidates must pass (repeatable): '
                                   '"json_fields>=0.9", "exact_match.delta>=0", "no-regression[:TOL]".'),
    general: bool = typer.Option(False, "--general", help="Also compare on tunery's general-skills tasks "
                                 "(instructions, arithmetic, formatting, JSON, refusals; report in OUT/general), "
                                 "with the same gates, to catch forgetting."),
    metric: list[str] = MetricOpt,
    data: Path = typer.Option(None, "--data", help="Also compare loss and perplexity on this dataset file."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
    batch_size: int = BatchOpt,
    max_new_tokens: int = MaxTokensOpt,
    dtype: str = DtypeOpt,
    judge: str = JudgeOpt,
    rubric: str = RubricOpt,
    fields: str = FieldsOpt,
    limit: int = LimitOpt,
) -> None:
    """Compare models on one task file; write an offline HTML report. Exit 3 if a gate fails."""
    from tunery.errors import ConfigError
    from tunery.evaluation.compare import compare_models
    from tunery.evaluation.general_skills import GENERAL_TASKS_PATH

    if len(models) < 2:
        raise ConfigError("compare needs at least two models", code="invalid_option",
                          hint="tunery compare BASE CANDIDATE --tasks FILE --out DIR")
    if tasks is None and not general:
        raise ConfigError("compare needs --tasks FILE, --general, or both", code="invalid_option")
    runs = ([(tasks, out)] if tasks is not None else []) + ([(GENERAL_TASKS_PATH, out / "general"
                                                               if tasks is not None else out)] if general else [])
    summaries = [compare_models(models, task_file, folder, gates=gate or [], metrics=metric or None,
                                batch_size=batch_size, max_new_tokens=max_new_tokens, dtype=check_dtype(dtype),
                                judge=judge_spec(judge, rubric), loss_data=data if task_file == tasks else None,
                                json_fields=split_fields(fields), limit=limit) for task_file, folder in runs]
    for summary in summaries:
        if as_json:
            print_json(summary.as_dict())
        else:
            print_summary(summary)
    failed = [g for summary in summaries for g in summary.failed_gates]
    for gate_result in failed:
        err_console.print(f"[bold red]gate failed[/]: {gate_result.rule} ({gate_result.model}): {gate_result.detail}",
                          highlight=False)
    if failed:
        raise typer.Exit(GATE_FAILED_EXIT)


def print_summary(summary) -> None:
    from rich.table import Table

    table = Table("metric", *[m.label for m in summary.models], *[f"Δ {c.candidate}" for c in summary.comparisons])
    for name in summary.models[0].metrics:
        if name.startswith("json_field."):
            continue
        means = [f"{m.metrics[name]['mean']:.3f}" if name in m.metrics else "-" for m in summary.models]
        deltas = [f"{c.deltas[name]['delta']:+.3f}" if name in c.deltas else "-" for c in summary.comparisons]
        table.add_row(name, *means, *deltas)
    console.print(table)
    for c in summary.comparisons:
        o = c.outcomes
        console.print(f"{c.candidate} vs {c.baseline}: {o['wins']} wins, {o['losses']} losses, {o['ties']} ties")
    from tunery.evaluation.report import usage_rows

    for name, cells in usage_rows(summary):
        if any(c != "-" for c in cells):
            console.print(f"{name}: " + ", ".join(f"{m.label} {c}" for m, c in zip(summary.models, cells)),
                          highlight=False)
    if summary.verdict.get("text"):
        console.print(f"[bold]verdict[/]: {summary.verdict['text']}", highlight=False)
    for g in summary.gates:
        console.print(f"gate {g.rule} ({g.model}): {'pass' if g.passed else 'FAIL'} — {g.detail}", highlight=False)
    console.print(f"report: {summary.report_path}")
