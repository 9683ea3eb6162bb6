"""tunery: fine-tune open language models on your own data, evaluate, serve, and close the loop.

Importing `tunery` is cheap: torch and transformers load only when a function needs them, so
`tunery.train` is `tunery.training.run.train` itself, looked up on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunery.training.run import train

__version__ = "0.1.0"
__all__ = ["__version__", "train"]


def __getattr__(name: str) -> Any:
    if name == "train":  # deferred: the training stack imports torch
        from tunery.training.run import train

        return train
    raise AttributeError(f"module 'tunery' has no attribute {name!r}")
