"""tunery: fine-tune open language models on your own data, evaluate, serve, and close the loop.

Importing `tunery` is cheap: torch and transformers load only when a function needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"


def train(config=None, **kwargs):
    """Train a model from a `TrainConfig` (or a path to a YAML config); see `tunery.training`."""
    from tunery.training.run import train as _train

    return _train(config, **kwargs)
