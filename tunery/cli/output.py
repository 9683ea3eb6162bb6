"""Rendering helpers for the CLI and the single place that maps TuneryError to exit codes."""

from __future__ import annotations

import functools
import json
import sys

import typer
from rich.console import Console

from tunery.errors import TuneryError

console = Console()
err_console = Console(stderr=True)


def handle_errors(fn):
    """Decorator: a TuneryError prints its message and hint and exits with its code, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TuneryError as exc:
            err_console.print(f"[bold red]error[/] [dim]({exc.code})[/]: {exc.message}", highlight=False)
            if exc.hint:
                err_console.print(f"  [yellow]hint[/]: {exc.hint}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
