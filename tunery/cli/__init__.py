"""The `tunery` command: parses arguments, calls one library function, renders the result.

Each area registers its commands from its own module; errors become exit codes in `output.py`.
"""

from __future__ import annotations

import typer

import tunery

app = typer.Typer(
    name="tunery",
    help="Fine-tune open language models on your own data, evaluate them, serve them, and feed "
    "what you learn back into training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"tunery {tunery.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print tunery's version and exit.")) -> None:
    """Fine-tune open language models on your own data, evaluate them, serve them, and feed what you
    learn back into training."""


def _register() -> None:
    # Imported for their side effect of adding commands to `app`, in the order `--help` lists them.
    from tunery.cli import data as _data  # noqa: F401, I001  (order: the --help listing)
    from tunery.cli import evaluate as _evaluate  # noqa: F401
    from tunery.cli import export as _export  # noqa: F401
    from tunery.cli import models as _models  # noqa: F401
    from tunery.cli import rag as _rag  # noqa: F401
    from tunery.cli import serve as _serve  # noqa: F401
    from tunery.cli import console as _console  # noqa: F401
    from tunery.cli import keys as _keys  # noqa: F401
    from tunery.cli import feedback as _feedback  # noqa: F401
    from tunery.cli import loop as _loop  # noqa: F401
    from tunery.cli import train as _train  # noqa: F401
    from tunery.cli import jobs as _jobs  # noqa: F401
    from tunery.cli import demo as _demo  # noqa: F401


def main() -> None:
    _register()
    app()
