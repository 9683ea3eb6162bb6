"""`tunery data ...`: check dataset files and show an example as the model will see it."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from tunery.cli import app
from tunery.cli.output import console, handle_errors, print_json
from tunery.data.chat_templates import apply_chat_template_override
from tunery.data.check import check_dataset
from tunery.data.show import show_example
from tunery.models import load_tokenizer

data_app = typer.Typer(help="Check datasets and see exactly what the model trains on.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_TRAINED_STYLE = "bold black on green"


@data_app.command("check")
@handle_errors
def check_command(
    files: list[Path] = typer.Argument(..., help="Dataset files or folders (.jsonl, .json, .csv, .parquet, "
                                                 ".txt/.md documents)."),
    model: str | None = typer.Option(None, "--model", help="Model reference: count tokens with its tokenizer "
                                                           "and chat template."),
    max_seq_len: int = typer.Option(2048, "--max-seq-len", min=2, help="With --model: list examples longer "
                                                                       "than this many tokens."),
    chat_template: str | None = typer.Option(None, "--chat-template", help="With --model: render with this chat "
                                             "template instead (a .jinja file, inline Jinja, or chatml), as "
                                             "data.chat_template does in training."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    max_problems: int = typer.Option(50, "--max-problems", min=1, help="Show at most this many problems."),
):
    """Validate dataset files: every problem with file, line, field, code and a hint; then a summary.

    Exit code 1 when there is any error, 0 when there are only warnings.
    """
    tokenizer = None
    if model:
        tokenizer = load_tokenizer(model)
        apply_chat_template_override(tokenizer, chat_template)
    report = check_dataset(files, tokenizer=tokenizer, max_seq_len=max_seq_len)
    if json_output:
        print_json(report)
    else:
        _render_report(report, max_problems, model)
    if not report["ok"]:
        raise typer.Exit(1)


def _render_report(report: dict, max_problems: int, model: str | None) -> None:
    problems = report["problems"]
    for problem in problems[:max_problems]:
        colour = "red" if problem["severity"] == "error" else "yellow"
        where = problem["file"] or "<dataset>"
        if problem["line"]:
            where += f":{problem['line']}"
        line = Text(where, style="bold")
        if problem["field"]:
            line.append(f" {problem['field']}", style="cyan")
        line.append(f" {problem['severity']}", style=colour)
        line.append(f" [{problem['code']}] ", style="dim")
        line.append(problem["message"])
        console.print(line, soft_wrap=True)
        if problem["hint"]:
            console.print(Text(f"    hint: {problem['hint']}", style="dim"), soft_wrap=True)
    hidden = report["problems_total"] - min(max_problems, len(problems))
    if hidden > 0:
        console.print(f"... and {hidden} more problem(s) (use --json for up to 1000, or fix these first)")
    console.print(_summary_table(report, model))
    s = report["summary"]
    verdict = "[bold red]FAILED[/]" if s["errors"] else "[bold green]OK[/]"
    console.print(f"{verdict}: {s['errors']} error(s), {s['warnings']} warning(s)")


def _summary_table(report: dict, model: str | None) -> Table:
    s = report["summary"]
    table = Table(title="summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")

    def add_row(what: str, value: str) -> None:
        table.add_row(what, Text(value))  # values hold paths: no markup
    for f in report["files"]:
        add_row("file", f"{f['file']} ({f['file_type']}, {f['format'] or 'no format'}, "
                        f"{f['examples']} examples, {f['blank_lines']} blank lines)")
    add_row("format", ", ".join(s["formats"]) or "-")
    add_row("examples", f"{s['examples']} ({s['documents']} documents)" if s["documents"] else str(s["examples"]))
    add_row("turns", f"{s['turns']} ({s['trained_turns']} trained)")
    if s["length_chars"]:
        add_row("length (chars)", _format_percentiles(s["length_chars"]))
    tokens = s["tokens"]
    if tokens:
        share = f"{100 * tokens['trained'] / tokens['total']:.0f}%" if tokens["total"] else "-"
        add_row("tokens", f"{tokens['total']} total, {tokens['trained']} trained ({share}) with {model}")
        if tokens["length"]:
            add_row("length (tokens)", _format_percentiles(tokens["length"]))
        add_row("too long", f"{tokens['too_long']} example(s) > {tokens['max_seq_len']} tokens")
        if tokens["text_chunks"]:
            add_row("text chunks", f"{tokens['text_chunks']} windows of <= {tokens['max_seq_len']} tokens")
    else:
        add_row("tokens", "pass --model to count tokens")
    add_row("warnings", str(s["warnings"]))
    add_row("errors", str(s["errors"]))
    return table


def _format_percentiles(p: dict) -> str:
    return f"p50 {p['p50']}, p90 {p['p90']}, p99 {p['p99']}, max {p['max']}, mean {p['mean']}"


@data_app.command("show")
@handle_errors
def show_command(
    file: Path = typer.Argument(..., help="Dataset file or folder."),
    model: str = typer.Option(..., "--model", help="Model reference whose tokenizer and chat template to use."),
    index: int = typer.Option(0, "--index", min=0, help="Which usable example to show (0-based)."),
    chat_template: str | None = typer.Option(None, "--chat-template", help="Render with this chat template "
                                             "instead (a .jinja file, inline Jinja, or chatml), as "
                                             "data.chat_template does in training."),
):
    """Print one example as the model sees it; trained tokens highlighted (`[[...]]` when piped)."""
    tokenizer = load_tokenizer(model)
    apply_chat_template_override(tokenizer, chat_template)
    shown = show_example(file, tokenizer, index)
    where = f" ({shown.location})" if shown.location else ""
    console.print(Text(f"example {index}{where}, {shown.kind}"), soft_wrap=True)
    if console.is_terminal:
        text = Text()
        for piece, trained in shown.spans:
            text.append(piece, style=_TRAINED_STYLE if trained else None)
        console.print(text, soft_wrap=True)
    else:
        sys.stdout.write("".join(f"[[{p}]]" if trained else p for p, trained in shown.spans) + "\n")
        sys.stdout.flush()
    total, trained_count = shown.total_tokens, shown.trained_tokens
    console.print(f"tokens: {total} total, {trained_count} trained, {total - trained_count} masked "
                  f"({'highlighted' if console.is_terminal else 'in [[...]]'}: trained)", highlight=False)
