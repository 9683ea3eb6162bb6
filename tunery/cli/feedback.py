"""`tunery feedback export`: rated answers from the store become a training dataset, checked."""

from __future__ import annotations

from pathlib import Path

import typer

from tunery.cli import app
from tunery.cli.output import console, handle_errors
from tunery.data.check import check_dataset
from tunery.data.problems import Problem
from tunery.platform.pii import Scrubber, load_pii_patterns
from tunery.store import open_store
from tunery.store.feedback_export import export_feedback
from tunery.store.owners import LOCAL_OWNER

feedback_app = typer.Typer(help="Turn feedback on served answers into training data.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
@handle_errors
def feedback_export(
    out: Path = typer.Option(..., "--out", help="Chat-format JSONL to write."),
    since: str | None = typer.Option(None, "--since", help="Only completions from this date (YYYY-MM-DD) on."),
    model: str | None = typer.Option(None, "--model", help="Only completions of this served model or adapter."),
    pairs: Path | None = typer.Option(None, "--pairs", help="Also write preference pairs (OpenAI's preference format: "
                                      "the correction preferred over the logged answer)."),
    scrub: bool = typer.Option(True, "--scrub/--no-scrub", help="Replace personal data and secrets with typed "
                               "placeholders (<EMAIL_1>) before writing."),
    pii_patterns: Path | None = typer.Option(None, "--pii-patterns", help="YAML file of extra patterns to scrub: "
                                             "`patterns: {EMPLOYEE_ID: 'EMP-\\d{6}'}`."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out/--pairs files that already exist."),
):
    """Write rated answers as training examples: corrections replace answers, thumbs-down without one are left out."""
    scrubber = Scrubber(load_pii_patterns(pii_patterns)) if scrub else None
    summary = export_feedback(open_store(), LOCAL_OWNER, out, since=since, model=model, pairs_out=pairs,
                              scrubber=scrubber, overwrite=overwrite)
    console.print(f"wrote {summary.examples} examples to {out}" + (f" and {summary.pairs} pairs to {pairs}"
                                                                   if pairs else "")
                  + (f" ({summary.skipped} thumbs-down without a correction left out)" if summary.skipped else ""))
    if summary.examples:
        # The very checks `tunery data check FILE` runs, defaults included (e.g. its minimum of examples),
        # so the verdict printed here is the one that command gives on the file.
        reports = [(out, check_dataset(out))] + ([(pairs, check_dataset(pairs))] if pairs and summary.pairs else [])
        for path, report in reports:
            state = "passes" if report["ok"] else "FAILS"
            console.print(f"data check {state} on {path}: {report['summary']['warnings']} warnings, "
                          f"{report['summary']['errors']} errors", soft_wrap=True)
            for problem in [p for p in report["problems"] if p["severity"] == "error"][:5]:
                console.print(f"  {Problem(**problem)}", soft_wrap=True, markup=False)
        if not all(report["ok"] for _, report in reports):
            # The export itself succeeded (exit 0): the files are written and kept. What they lack is said
            # here, before `tunery train` would refuse them for the same reasons.
            console.print("the export is written; `tunery data check` refuses it as it is: collect more feedback "
                          "or merge it with other data before training on it", soft_wrap=True)
