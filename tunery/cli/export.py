"""`tunery export`: write a run as an adapter, a merged folder or a GGUF file, verified by logits."""

from __future__ import annotations

from pathlib import Path

import typer

from tunery.cli import app
from tunery.cli.output import console, handle_errors, print_json
from tunery.export import export_run


@app.command("export")
@handle_errors
def export_command(
    run_dir: Path = typer.Argument(..., help="A completed run directory."),
    fmt: str = typer.Option(..., "--format", "-f", help="adapter, merged or gguf."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (new or empty, or --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out that is a file or an "
                                   "earlier export (never a folder of other files); the new export is complete "
                                   "and verified before the old one goes."),
    dtype: str = typer.Option(None, "--dtype", help="merged: fp32, bf16 or fp16 (default: the base's); "
                              "gguf: f32, f16, bf16 or q8_0 (default f16)."),
    ollama: bool = typer.Option(False, "--ollama", help="gguf: also write an Ollama Modelfile."),
    as_json: bool = typer.Option(False, "--json", help="Print the export result as JSON."),
) -> None:
    """Export a run as a PEFT adapter, a merged safetensors folder or a GGUF file, verified by logits."""
    result = export_run(run_dir, fmt, out, dtype=dtype, ollama=ollama, overwrite=overwrite)
    if as_json:
        print_json(result.as_dict())
        return
    console.print(f"exported {result.format} to {result.path}")
    console.print(f"verified: max |Δlogit| {result.max_abs_diff:.3g} ≤ tolerance {result.tolerance:.3g} "
                  f"on {result.num_prompts} prompts")
