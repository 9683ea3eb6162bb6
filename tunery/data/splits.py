"""Deterministic train/validation splits and dataset versions (content hashes).

Both depend only on what examples say (not where they came from), so re-saving a file as CSV or
moving it keeps its version, and a split never depends on file order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from tunery.data.dataset import example_key
from tunery.errors import DataError
from tunery.types import Conversation


def dataset_version(conversations: Sequence[Conversation]) -> str:
    """sha256 (hex) over the normalised examples, in order (order changes what training sees)."""
    digest = hashlib.sha256()
    for conv in conversations:
        key = example_key(conv).encode("utf-8")
        digest.update(len(key).to_bytes(8, "little"))
        digest.update(key)
    return digest.hexdigest()


def split_dataset(conversations: Sequence[Conversation], *, validation_fraction: float = 0.1,
                  seed: int = 0) -> tuple[list[Conversation], list[Conversation]]:
    """(train, validation): the same seed and examples give the same split, in any input order.

    Each example is ranked by a seeded hash of its content, and the lowest-ranked go to validation;
    identical examples hash alike, so a duplicate never lands on both sides.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise DataError(f"validation_fraction must be between 0 and 1, got {validation_fraction}",
                        code="invalid_split", hint="use e.g. 0.1 for a 10% validation split")
    if len(conversations) < 2:
        raise DataError(f"cannot split {len(conversations)} example(s) into train and validation",
                        code="too_few_examples", hint="add examples or pass a validation file")
    ranks = [(_seeded_rank(conv, seed), index) for index, conv in enumerate(conversations)]
    target = min(max(1, round(validation_fraction * len(conversations))), len(conversations) - 1)
    ordered = sorted(ranks)
    # Keep groups of identical examples together: extend the cut past equal ranks, stop before it empties train.
    cut = target
    while 0 < cut < len(ordered) and ordered[cut][0] == ordered[cut - 1][0]:
        cut += 1
    if cut >= len(ordered):
        cut = target
        while cut > 0 and ordered[cut][0] == ordered[cut - 1][0]:
            cut -= 1
    validation_ids = {index for _, index in ordered[:cut]}
    train = [c for i, c in enumerate(conversations) if i not in validation_ids]
    validation = [c for i, c in enumerate(conversations) if i in validation_ids]
    if not train or not validation:
        raise DataError("every example is identical, so no split keeps train and validation apart",
                        code="too_few_examples", hint="add distinct examples")
    return train, validation


def _seeded_rank(conv: Conversation, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{example_key(conv)}".encode()).hexdigest()
