"""Datasets: read files in four formats into Conversations, validate them with located problems,
split them, version them, and tokenize them (cached). Templating lives in `template.py`, packing in
`packing.py`; importing this package loads no torch.
"""

from tunery.data.dataset import (
    MIN_EXAMPLES,
    DatasetReport,
    example_key,
    find_shared_examples,
    load_dataset,
    read_dataset,
)
from tunery.data.problems import Problem
from tunery.data.splits import dataset_version, split_dataset
from tunery.data.tokenized import chunk_token_ids, tokenize_dataset, tokenizer_hash

__all__ = [
    "MIN_EXAMPLES",
    "DatasetReport",
    "Problem",
    "chunk_token_ids",
    "dataset_version",
    "example_key",
    "find_shared_examples",
    "load_dataset",
    "read_dataset",
    "split_dataset",
    "tokenize_dataset",
    "tokenizer_hash",
]
