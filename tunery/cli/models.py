"""`tunery models ...`: base models, and the registry: register, list, show, promote, roll back versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from tunery.cli import app
from tunery.cli.output import console, handle_errors, print_json
from tunery.models import list_models, resolve_model
from tunery.platform.registry import describe, promote, register_run, rollback
from tunery.store import open_store
from tunery.store.registry import aliases, list_versions

models_app = typer.Typer(help="Base models, and registered versions NAME@N with aliases (production, candidate, "
                         "...): register, show, promote past gates, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@handle_errors
def list_command(json_output: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")):
    """Show built-in models, the models cached under TUNERY_HOME/models, and registered versions with their aliases."""
    rows = list_models()
    store = open_store()
    held = aliases(store)
    versions: list[dict[str, Any]] = [{"name": v.ref, "kind": "version", "aliases": sorted(a for (n, a), num in held.items()
                                                                     if n == v.name and num == v.version),
                 "base_model": v.base_model, "run_dir": v.run_dir, "created_at": v.created_at}
                for v in list_versions(store)]
    if json_output:
        print_json(rows + versions)
        return
    table = Table("name", "kind", "cached", "description")
    for row in rows:
        table.add_row(row["name"], row["kind"], "yes" if row["cached"] else "no", row["description"])
    console.print(table)
    if versions:
        table = Table("version", "aliases", "base model", "created")
        for row in versions:
            table.add_row(row["name"], ", ".join(row["aliases"]), row["base_model"], row["created_at"])
        console.print(table)


@models_app.command("prepare")
@handle_errors
def prepare_command(ref: str = typer.Argument("smollm2-135m-instruct", help="Model reference to resolve.")):
    """Resolve a model (converting a built-in once) and print where it lives."""
    resolved = resolve_model(ref)
    console.print(f"{resolved.ref}: {resolved.kind} at {resolved.path}")


@models_app.command("register")
@handle_errors
def register_command(run_dir: Path = typer.Argument(..., help="A completed run directory."),
                     name: str = typer.Option(..., "--name", help="Model name; the version becomes NAME@N."),
                     alias: str | None = typer.Option(None, "--alias", help="Also point this alias at it "
                                                      "(e.g. production for the first version)."),
                     rag: Path | None = typer.Option(None, "--rag", help="Index folder (`tunery rag index`) the "
                                                     "version answers from when served by name, as RUN+rag:INDEX_DIR.")):
    """Register a run made by hand as the next version of NAME, with its lineage (and an index to retrieve from)."""
    version = register_run(open_store(), run_dir, name, alias=alias, created_by="local", rag_index=rag)
    console.print(f"registered {version.ref}" + (f" ({alias})" if alias else "")
                  + (f", retrieving from {version.rag_index}" if version.rag_index else ""), highlight=False)


@models_app.command("show")
@handle_errors
def show_command(ref: str = typer.Argument(..., help="NAME (its production version), NAME@N or NAME@ALIAS."),
                 json_output: bool = typer.Option(False, "--json", help="Print JSON.")):
    """A version's lineage back to the base, its reports, aliases, alias history and production stats."""
    info = describe(open_store(), ref)
    if json_output:
        print_json(info)
        return
    console.print(f"[bold]{info['version']}[/] {', '.join(info['aliases'])}", highlight=False)
    console.print("lineage: " + " <- ".join(info["lineage"]), highlight=False)
    console.print(f"run: {info['run_dir']}\ndataset version: {info['dataset_version']}", highlight=False)
    if info["rag_index"]:
        console.print(f"retrieves from: {info['rag_index']}", highlight=False)
    for key, file in (info["data_files"] or {}).items():
        console.print(f"{key} data: {file['path']} (sha256 {str(file['sha256'])[:12]})", highlight=False)
    stats = info["production_stats"]
    console.print(f"feedback: {stats['up']} up, {stats['down']} down, {stats['corrections']} corrections")
    for report in info["reports"]:
        console.print(f"report: {report}", highlight=False)
    for move in info["history"]:
        console.print(f"{move['created_at']} {move['action']} {move['alias']}: {move['from_version']} -> "
                      f"{move['to_version']} {move['outcome']} by {move['actor'] or '-'}"
                      + (f" ({move['reason']})" if move["reason"] else "") + gated_with(move["gate"]), highlight=False)


def gated_with(gate: dict | None) -> str:
    """What a move's gates scored: the weights, and the candidate's decode backend (generate, torch, lane)."""
    if not gate or not gate.get("weights"):  # no gate, a loop's own report, or a move recorded before weights were
        return ""
    decode = sorted({c["decode"] for c in gate.get("comparisons", []) if c.get("decode")})
    return f", gated on {gate['weights']} weights" + (f" ({', '.join(decode)})" if decode else "")


@models_app.command("promote")
@handle_errors
def promote_command(ref: str = typer.Argument(..., help="NAME@N (or NAME@ALIAS) to promote."),
                    to: str = typer.Option("production", "--to", help="Alias to move."),
                    tasks: Path | None = typer.Option(None, "--tasks", "-t", help="Compare with the alias's holder "
                                                      "on this task file first."),
                    gate: list[str] = typer.Option(None, "--gate", "-g", help="Gate rule (repeatable; default "
                                                   "no-regression when tasks are given)."),
                    general: bool = typer.Option(False, "--general", help="Also gate on the general-skills tasks."),
                    out: Path | None = typer.Option(None, "--out", help="Folder for the comparison reports."),
                    force: bool = typer.Option(False, "--force", help="Promote even when a gate fails (needs --reason)."),
                    reason: str | None = typer.Option(None, "--reason", help="Why (recorded in the audit)."),
                    limit: int | None = typer.Option(None, "--limit", min=1, help="Use only the first N task rows."),
                    weights: str | None = typer.Option(None, "--weights", help="Score both versions as `tunery serve "
                                                       "--weights W` serves them: full, int8 or int4 (int4 decodes in "
                                                       "the compiled fast lane), generated by the serving engine; "
                                                       "the audit records them. Default: Hugging Face generate on "
                                                       "full precision.")):
    """Point an alias at a version after the gates pass; exit 3 when a gate fails. Running servers follow."""
    result = promote(open_store(), ref, to=to, tasks=tasks, gates=gate or [], general=general, out_dir=out,
                     force=force, reason=reason, actor="local", limit=limit, weights=weights)
    before = f"{result['name']}@{result['from']}" if result["from"] is not None else "nothing"
    console.print(f"{result['name']}@{result['alias']}: {before} -> {result['name']}@{result['to']}", highlight=False)


@models_app.command("rollback")
@handle_errors
def rollback_command(name: str = typer.Argument(..., help="Model name."),
                     alias: str = typer.Option("production", "--alias", help="Alias to roll back."),
                     reason: str | None = typer.Option(None, "--reason", help="Why (recorded in the audit).")):
    """Put back the version that held the alias before its last move."""
    result = rollback(open_store(), name, alias=alias, actor="local", reason=reason)
    console.print(f"{result['name']}@{result['alias']}: {result['name']}@{result['from']} -> "
                  f"{result['name']}@{result['to']}", highlight=False)
