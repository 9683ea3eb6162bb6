"""`tunery train` and `tunery config validate|show`: parse, call the library, render."""

from __future__ import annotations

import re
from pathlib import Path

import typer

import tunery
from tunery.cli import app
from tunery.cli.output import console, err_console, handle_errors, print_json
from tunery.config import dump_config, load_train_config
from tunery.errors import ConfigError

config_app = typer.Typer(help="Check and print training configs.", no_args_is_help=True)
app.add_typer(config_app, name="config")

EXIT_INTERRUPTED = 130
OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*=")  # KEY=VALUE, where a config path was expected


@app.command("train", context_settings={"allow_extra_args": False})
@handle_errors
def train_command(
    config: Path = typer.Argument(None, help="Training config (YAML). Optional: KEY=VALUE overrides alone start from the "
                                "defaults (`tunery train base_model=... data.train=...`). Not needed with --resume.",
                                show_default=False),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides, e.g. method=qlora train.max_steps=30.",
                                          show_default=False),
    resume: Path = typer.Option(None, "--resume", help="Continue an interrupted run directory exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Train into an output_dir that is not empty: replace an "
                                   "earlier run there (its own files only) or write beside your files (never "
                                   "replacing one)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar or tables."),
    json_logs: bool = typer.Option(False, "--json-logs", help="One JSON object per line on stdout (for scripts)."),
):
    """Fine-tune a model (full, LoRA or QLoRA) and write a run directory.

    Under `torchrun --nproc_per_node N` the same command trains data-parallel (only rank 0 writes).
    """
    if resume is not None:
        if config is not None or overrides or overwrite:
            raise ConfigError("--resume continues a run with its saved config; do not pass a config, overrides "
                              "or --overwrite",
                              hint=f"tunery train --resume {resume}")
        result = tunery.train(resume=resume, quiet=quiet, json_logs=json_logs)
    else:
        config, overrides = split_config(config, overrides)
        if config is None and not overrides:
            raise ConfigError("no config given", hint="tunery train CONFIG.yaml [KEY=VALUE ...], tunery train "
                              "base_model=... data.train=... [KEY=VALUE ...], or --resume RUN_DIR")
        result = tunery.train(load_train_config(config, overrides or []), overwrite=overwrite, quiet=quiet,
                              json_logs=json_logs)
    if result.status == "interrupted":
        err_console.print(f"interrupted at step {result.steps}; resume with:\n  {result.resume_command}",
                          highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED)
    if not quiet and not json_logs:
        console.print(f"run directory: {result.run_dir}", highlight=False)


def split_config(config: Path | None, overrides: list[str] | None) -> tuple[Path | None, list[str]]:
    """A first argument that is KEY=VALUE and no file is an override: no YAML, the defaults plus the overrides."""
    if config is not None and OVERRIDE.match(str(config)) and not config.exists():
        return None, [str(config), *(overrides or [])]
    return config, list(overrides or [])


@config_app.command("validate")
@handle_errors
def validate_command(
    file: Path | None = typer.Argument(None, help="Training config (YAML); without it, the defaults plus the overrides.",
                                show_default=False),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides to check as well.", show_default=False),
):
    """Check a config strictly: unknown keys, wrong types and bad values fail with the closest valid key."""
    file, overrides = split_config(file, overrides)
    if file is None and not overrides:
        raise ConfigError("nothing to validate", hint="tunery config validate CONFIG.yaml [KEY=VALUE ...], or "
                          "KEY=VALUE ... alone")
    load_train_config(file, overrides)
    console.print(f"{file or 'the overrides'}: valid", highlight=False)


@config_app.command("show")
@handle_errors
def show_command(
    file: Path = typer.Argument(None, help="Training config (YAML); without it, the defaults.", show_default=False),
    overrides: list[str] = typer.Argument(None, help="KEY=VALUE overrides.", show_default=False),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of YAML."),
):
    """Print the resolved config with every default filled in (`auto` values resolve when a run starts)."""
    config = load_train_config(*split_config(file, overrides))
    if json_output:
        print_json(config.model_dump(mode="json"))
    else:
        typer.echo(dump_config(config), nl=False)
