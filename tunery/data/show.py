"""One example as the model sees it: the templated text in runs of trained and masked tokens.

What `tunery data show` prints and the console's example viewer draws; it knows nothing of either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunery.data.dataset import read_dataset
from tunery.data.template import IGNORE_INDEX, encode_conversation
from tunery.errors import DataError


@dataclass(frozen=True)
class ShownExample:
    index: int
    count: int  # usable examples in the file
    location: str  # file:line, when known
    line: int  # the example's line in its file (0 when unknown)
    kind: str  # the example's format
    spans: list[tuple[str, bool]]  # (text, trained)
    total_tokens: int
    trained_tokens: int


def show_example(path: str | Path, tokenizer, index: int = 0) -> ShownExample:
    """Read a dataset and encode example `index` with `tokenizer`'s chat template and loss mask."""
    if not Path(path).exists():  # read with no minimum, a missing file would read as one with no examples
        raise DataError(f"{path} does not exist", code="file_not_found", hint="check the path")
    conversations = read_dataset(path, min_examples=0).conversations
    if not conversations:
        raise DataError(f"{path} has no usable examples", code="no_examples",
                        hint="run `tunery data check` to see why every example was skipped")
    if not 0 <= index < len(conversations):
        raise DataError(f"no example {index}: {path} has {len(conversations)} usable example(s)",
                        code="index_out_of_range", hint=f"use an index between 0 and {len(conversations) - 1}; "
                        "run `tunery data check` to see why examples were skipped")
    conversation = conversations[index]
    example = encode_conversation(tokenizer, conversation)
    where = conversation.location
    return ShownExample(index=index, count=len(conversations), location=str(where) if where else "",
                        line=where.line if where else 0,
                        kind=conversation.kind, spans=trained_spans(tokenizer, example.input_ids, example.labels),
                        total_tokens=len(example.input_ids), trained_tokens=example.num_trained)


def trained_spans(tokenizer, ids: list[int], labels: list[int]) -> list[tuple[str, bool]]:
    """Runs of tokens with the same trained flag, decoded together so multi-byte characters stay whole."""
    spans: list[tuple[str, bool]] = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or (labels[end] != IGNORE_INDEX) != (labels[start] != IGNORE_INDEX):
            piece = tokenizer.decode(ids[start:end], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            spans.append((piece, labels[start] != IGNORE_INDEX))
            start = end
    return spans
