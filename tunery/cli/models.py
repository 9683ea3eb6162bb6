"""`tunery models ...`: list built-in and cached models, and pre-fetch the default one."""

from __future__ import annotations

import typer
from rich.table import Table

from tunery.cli import app
from tunery.cli.output import console, handle_errors, print_json

models_app = typer.Typer(help="List and prepare base models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@handle_errors
def list_command(json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Show built-in models and the models cached under TUNERY_HOME/models."""
    from tunery.models import list_models

    rows = list_models()
    if json_output:
        print_json(rows)
        return
    table = Table("name", "kind", "cached", "description")
    for row in rows:
        table.add_row(row["name"], row["kind"], "yes" if row["cached"] else "no", row["description"])
    console.print(table)


@models_app.command("prepare")
@handle_errors
def prepare_command(ref: str = typer.Argument("smollm2-135m-instruct", help="Model reference to resolve.")):
    """Resolve a model (converting a built-in once) and print where it lives."""
    from tunery.models import resolve_model

    resolved = resolve_model(ref)
    console.print(f"{resolved.ref}: {resolved.kind} at {resolved.path}")
