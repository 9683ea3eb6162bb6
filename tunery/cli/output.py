"""Rendering helpers for the CLI and the single place that maps TuneryError to exit codes."""

from __future__ import annotations

import functools
import json
import sqlite3
import sys

import typer
from rich.console import Console
from rich.markup import escape

from tunery.errors import DataError, TuneryError
from tunery.safeio import os_error
from tunery.store.errors import store_error

console = Console()
err_console = Console(stderr=True)


def as_tunery_error(exc: BaseException) -> TuneryError | None:
    """The boundary: OS, decoding and database failures that escaped a library become clear errors."""
    if isinstance(exc, TuneryError):
        return exc
    if isinstance(exc, OSError):
        return os_error(exc, what="path", error=TuneryError)
    if isinstance(exc, RuntimeError) and str(exc).startswith("Symlink loop from "):  # Path.resolve() on a loop
        return DataError(f"{str(exc).removeprefix('Symlink loop from ')} is a symbolic link loop", code="file_error",
                         hint="point the link at a real file")
    if isinstance(exc, UnicodeError):
        return DataError(f"a file or argument is not valid UTF-8 text ({type(exc).__name__}: {getattr(exc, 'reason', exc)})",
                         code="not_utf8", hint="save files as UTF-8 text; binary files cannot be read here")
    if isinstance(exc, sqlite3.Error) or type(exc).__module__.split(".")[0] == "psycopg":  # without importing it
        return store_error(exc)
    return None


def handle_errors(fn):
    """Decorator: a TuneryError (or an OS, text or database error) prints a message and hint and exits."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as raised:
            exc = as_tunery_error(raised)
            if exc is None:  # a bug: keep its traceback
                raise
            # Messages name files and echo values: never read as markup, never wrapped inside a path.
            err_console.print(f"[bold red]error[/] [dim]({escape(exc.code)})[/]: {escape(exc.message)}",
                              highlight=False, soft_wrap=True)
            if exc.hint and exc.hint not in exc.message:  # a key's "did you mean" is in both
                err_console.print(f"  [yellow]hint[/]: {escape(exc.hint)}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
