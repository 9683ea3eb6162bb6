"""The work both sides do: one spec (model, data, LoRA shape, schedule, batch, steps) and its data files.

The training subset is exactly `steps x global batch` examples that fit `max_seq_len`, so each side
sees every example once and neither truncates; token counts come from tunery's chat encoding.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunery.data.dataset import load_dataset
from tunery.data.template import encode_conversation
from tunery.errors import DataError


@dataclass
class Workload:
    """Everything that must be equal between tunery and the baseline in one comparison."""

    model_path: str
    train_file: str
    val_file: str
    method: str = "lora"
    rank: int = 16
    alpha: float = 32.0
    targets: str = "all-linear"
    learning_rate: float = 2e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    steps: int = 20
    max_seq_len: int = 512
    seed: int = 42
    precision: str = "auto"
    threads: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum

    @property
    def train_examples(self) -> int:
        return self.steps * self.global_batch

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Workload:
        return cls(**json.loads(text))


@dataclass
class DataStats:
    """Token counts of the prepared subset, from tunery's encoding of each conversation."""

    examples: int
    tokens: int
    trained_tokens: int
    context_sum: int  # sum over examples of n(n+1)/2: causal attention pairs, for the attention FLOPs

    def to_dict(self) -> dict:
        return asdict(self)


def read_messages(path: Path) -> list[list[dict]]:
    """Chat examples of a JSONL file as bare role/content message lists (other keys dropped)."""
    conversations = load_dataset(str(path), min_examples=1)
    if any(c.kind != "chat" for c in conversations):
        raise DataError(f"{path}: the benchmark needs chat examples ({{\"messages\": [...]}})")
    return [[{"role": t.role, "content": t.content} for t in c.turns] for c in conversations]


def prepare_subset(source: Path, dest: Path, tokenizer, *, count: int, max_seq_len: int) -> DataStats:
    """Write the first `count` examples of `source` that fit `max_seq_len` to `dest` as chat JSONL."""
    from tunery.types import Conversation, Turn

    kept: list[list[dict]] = []
    tokens = trained = context = 0
    for messages in read_messages(source):
        turns = tuple(Turn(m["role"], m["content"], train=m["role"] == "assistant") for m in messages)
        example = encode_conversation(tokenizer, Conversation(turns))
        n = len(example.input_ids)
        if n > max_seq_len:
            continue
        kept.append(messages)
        tokens += n
        trained += example.num_trained
        context += n * (n + 1) // 2
        if len(kept) == count:
            break
    if len(kept) < count:
        raise DataError(f"{source}: only {len(kept)} examples fit max_seq_len={max_seq_len}, {count} needed",
                        hint="lower --steps or --batch-size, or raise --max-seq-len")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("w", encoding="utf-8") as f:
        for messages in kept:
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return DataStats(examples=len(kept), tokens=tokens, trained_tokens=trained, context_sum=context)


def find_split(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first existing `<name>.jsonl` (or `.json`) in `folder`."""
    for name in names:
        for suffix in (".jsonl", ".json"):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return path
    return None
