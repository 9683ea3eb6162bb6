"""Where tunery keeps its files (`TUNERY_HOME`, default `~/.tunery`) and safe name checks.

No user-supplied string becomes part of a path without passing `check_name`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tunery.errors import ConfigError

# fullmatch, not `$`: `$` also matches before a final newline, and "name\n" must not become a folder.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def tunery_home() -> Path:
    """The root folder for models, caches, runs and the database; created (0700) on first use."""
    home = Path(os.environ.get("TUNERY_HOME") or Path.home() / ".tunery").expanduser()
    if not home.is_dir():  # owner-only: it holds the database of prompts and answers, uploads and weights
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def _subdir(name: str) -> Path:
    path = tunery_home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Converted and cached base models."""
    return _subdir("models")


def cache_dir() -> Path:
    """Tokenized datasets and other derived data that can be rebuilt."""
    return _subdir("cache")


GATES_FILE = "gates.jsonl"  # in a run directory: one line per comparison that gated it (weights, rules, passed)


def runs_dir() -> Path:
    """Default home of run directories."""
    return _subdir("runs")


def database_path() -> Path:
    return tunery_home() / "tunery.db"


def check_name(name: str, what: str = "name") -> str:
    """Return `name` if it is a safe identifier (letters, digits, `._-`, no path parts)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise ConfigError(  # the value is not repeated: it may be 5,000 characters or come from a request
            f"invalid {what}",
            code="invalid_name",
            hint="use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name
