"""Means, paired deltas and seeded bootstrap confidence intervals over per-example scores.

Pure numpy on lists of floats; deterministic for a given seed. Knows nothing of models or files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def bootstrap_mean(values: list[float], *, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES,
                   confidence: float = CONFIDENCE) -> Interval:
    """Mean of `values` with a percentile bootstrap interval (resampling examples)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, data.size, size=(samples, data.size))
    means = data[indices].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(float(data.mean()), float(low), float(high))


def bootstrap_delta(baseline: list[float], candidate: list[float], *, seed: int = 0,
                    samples: int = BOOTSTRAP_SAMPLES, confidence: float = CONFIDENCE) -> Interval:
    """Mean of candidate - baseline over paired examples, with a paired bootstrap interval."""
    if len(baseline) != len(candidate):
        raise ValueError("paired bootstrap needs equally long score lists")
    differences = [c - b for b, c in zip(baseline, candidate)]
    return bootstrap_mean(differences, seed=seed, samples=samples, confidence=confidence)


def count_outcomes(baseline: list[float], candidate: list[float], epsilon: float = 1e-9) -> dict[str, int]:
    """Wins, losses and ties of candidate against baseline, example by example."""
    wins = sum(1 for b, c in zip(baseline, candidate) if c > b + epsilon)
    losses = sum(1 for b, c in zip(baseline, candidate) if c < b - epsilon)
    return {"wins": wins, "losses": losses, "ties": len(baseline) - wins - losses}
