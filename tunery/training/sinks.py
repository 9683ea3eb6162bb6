"""Optional metric sinks beside metrics.jsonl: TensorBoard and MLflow, when installed and enabled.

Enabled but not installed is a config error at start, not a silent no-op.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from tunery.config import LoggingConfig
from tunery.errors import ConfigError

SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "val_loss", "val_perplexity", "val_token_accuracy")


def open_metric_sinks(logging: LoggingConfig, run_dir: Path, params: dict) -> list[Callable[[dict], None]]:
    """One callable per enabled sink; each takes a metrics event."""
    sinks: list[Callable[[dict], None]] = []
    if logging.tensorboard:
        require("tensorboard", "logging.tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

        def write_tensorboard(event: dict) -> None:
            for key in SCALARS:
                if key in event:
                    writer.add_scalar(f"{event['type']}/{key}", event[key], event["step"])
            writer.flush()

        sinks.append(write_tensorboard)
    if logging.mlflow:
        require("mlflow", "logging.mlflow")
        import mlflow

        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params({k: v for k, v in params.items() if v is not None})
        sinks.append(lambda event: mlflow.log_metrics({k: float(event[k]) for k in SCALARS if k in event},
                                                      step=event["step"]))
    return sinks


def require(package: str, key: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"{key} is true but the `{package}` package is not installed",
                          code="missing_package", hint=f"pip install {package}, or set {key}: false")
