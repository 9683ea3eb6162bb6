"""The one exception tree of tunery.

Library code raises these; only `tunery.cli` maps them to exit codes and only `tunery.server`
(and `tunery.web`) map them to HTTP responses. Every error carries a stable `code` and, where it
helps, a `hint`.

    TuneryError                 exit 1; HTTP 400 unless below
    ├── ConfigError             exit 2; a config, override or option is invalid
    ├── DataError               a dataset file cannot be read or is invalid (`problems` located)
    ├── ModelError              a model reference cannot be resolved or loaded
    ├── CheckpointError         a checkpoint is missing, corrupt or cannot be written
    ├── TrainingError           training stopped on a fault (NaN loss, out of memory, disk full)
    ├── ResourceError           not enough memory or disk; HTTP 503
    ├── EvaluationError         a task file or metric is invalid
    ├── ExportError             an export failed or did not verify
    ├── RetrievalError          a retrieval index cannot be built, read or used
    ├── StoreError              the database cannot be opened, migrated, read or written; HTTP 503
    │                           with Retry-After
    └── NotFoundError           a named thing does not exist; HTTP 404
"""

from __future__ import annotations


class TuneryError(Exception):
    """Base of every error tunery raises on purpose."""

    code: str = "tunery_error"
    exit_code: int = 1
    param: str | None = None  # the request field at fault, where there is one (OpenAI's error.param)

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class ConfigError(TuneryError):
    """A config file, override or argument is invalid."""

    code = "config_error"
    exit_code = 2


class DataError(TuneryError):
    """A dataset file cannot be read or is invalid. `problems` lists located issues."""

    code = "data_error"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None,
                 problems: list | None = None):
        super().__init__(message, code=code, hint=hint)
        self.problems = problems or []


class ModelError(TuneryError):
    """A model reference cannot be resolved or loaded."""

    code = "model_error"


class CheckpointError(TuneryError):
    """A checkpoint is missing, corrupt or cannot be written."""

    code = "checkpoint_error"


class TrainingError(TuneryError):
    """Training stopped on a fault (NaN loss, out of memory, disk full)."""

    code = "training_error"


class ResourceError(TuneryError):
    """Not enough memory or disk for the requested work; the message carries the numbers."""

    code = "insufficient_resources"


class EvaluationError(TuneryError):
    """An evaluation task file or metric is invalid."""

    code = "evaluation_error"


class ExportError(TuneryError):
    """An export failed or did not verify."""

    code = "export_error"


class RetrievalError(TuneryError):
    """A document index is missing, incomplete, or built differently from what reads it."""

    code = "retrieval_error"


class StoreError(TuneryError):
    """The database (SQLite or PostgreSQL) cannot be opened, migrated, read or written."""

    code = "store_error"


class NotFoundError(TuneryError):
    """A named thing (run, adapter, key, completion) does not exist."""

    code = "not_found"
