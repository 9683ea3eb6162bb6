"""The training run's view of data: read, split, tokenize, and order examples into steps.

Example order is a pure function of (seed, epoch), so a resumed run needs only its position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from tunery.config import DataConfig
from tunery.data.augment import accept_paraphrase, augment_questions, questions_to_reword
from tunery.data.dataset import load_dataset
from tunery.data.splits import dataset_version, split_dataset
from tunery.data.tokenized import tokenize_dataset
from tunery.errors import ConfigError
from tunery.rag import Retriever
from tunery.rag.raft import add_retrieved_context
from tunery.training.auto import is_fact_like, mean_trained_tokens
from tunery.types import Conversation, TokenizedExample


@dataclass
class TrainingData:
    """Tokenized train and validation examples plus where they came from."""

    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    dataset_version: str
    info: dict = field(default_factory=dict)
    augmented: int = 0  # how many of `train` are rewordings added by data.augment (they come last)


def prepare_data(data: DataConfig, tokenizer, *, seed: int,
                 train_conversations: Sequence[Conversation] | None = None,
                 val_conversations: Sequence[Conversation] | None = None, objective: str = "sft",
                 base_model: str = "MODEL", augment: bool = False,
                 paraphrase: Callable[[Sequence[str]], dict[str, str]] | None = None) -> TrainingData:
    """Read (or take) conversations, split off validation, tokenize both (cached).

    `objective: dpo` takes preference pairs only; `sft` takes every other kind. `data.rag` adds
    retrieved context to every question (`base_model` names the model in a wrong-tokenizer error).
    `augment` adds rewordings of the training questions when the data is fact-like (data.augment), and
    `paraphrase` (question -> a model's reply) one more for each question whose reply keeps its meaning.
    """
    if train_conversations is None:
        if not data.train:
            raise ConfigError("data.train is not set", hint="set data.train: path/to/train.jsonl in the config")
        train_conversations = load_dataset(data.train)
    train_conversations = list(train_conversations)
    if val_conversations is None and data.validation:
        val_conversations = load_dataset(data.validation, min_examples=1)
    if val_conversations is None and data.val_fraction > 0:
        train_conversations, val_conversations = split_dataset(
            train_conversations, validation_fraction=data.val_fraction, seed=seed)
    val_conversations = list(val_conversations or [])
    check_objective(train_conversations + val_conversations, objective)
    rag_info = {}
    if data.rag:
        train_conversations, val_conversations, rag_info = with_retrieved_context(
            data, tokenizer, train_conversations, val_conversations, seed=seed, base_model=base_model)
    train, train_info = tokenize_dataset(train_conversations, tokenizer, data.max_seq_len, too_long=data.too_long)
    added: list[TokenizedExample] = []
    if augment and objective == "sft" and not data.rag and is_fact_like(len(train), mean_trained_tokens(train)):
        # Validation keeps its own wording: rewordings of held-out questions would leak them.
        replies = paraphrase(questions_to_reword(train_conversations)) if paraphrase else {}
        accepted = {q: kept for q, reply in replies.items() if (kept := accept_paraphrase(q, reply))}
        added, _ = tokenize_dataset(augment_questions(train_conversations, accepted), tokenizer, data.max_seq_len,
                                    too_long=data.too_long)
    validation, _ = tokenize_dataset(val_conversations, tokenizer, data.max_seq_len, too_long=data.too_long) \
        if val_conversations else ([], {})
    if not train:
        raise ConfigError("no training example is left after tokenization",
                          hint="check data.max_seq_len and data.too_long")
    version = dataset_version([*train_conversations, *val_conversations])
    info = {"train_examples": len(train), "val_examples": len(validation),
            "train_tokens": sum(len(e.input_ids) for e in train),
            "train_trained_tokens": sum(e.num_trained for e in train),
            "tokenization_cached": bool(train_info.get("cached")), **rag_info}
    if added:
        info.update(augmented_examples=len(added), train_examples=len(train) + len(added))
    if added and paraphrase:
        info.update(model_paraphrases=len(accepted), model_paraphrases_asked=len(replies))
    return TrainingData(train=train + added, validation=validation, dataset_version=version, info=info,
                        augmented=len(added))


def check_objective(conversations: Sequence[Conversation], objective: str) -> None:
    """Preference pairs train with DPO, and DPO trains on nothing else; the error names the first misfit."""
    for conv in conversations:
        if (conv.kind == "preference") != (objective == "dpo"):
            where = f"{conv.location}: " if conv.location else ""
            if objective == "dpo":
                raise ConfigError(f"{where}objective dpo needs preference pairs (input, preferred_output, "
                                  f"non_preferred_output), found a {conv.kind} example", code="wrong_data_for_objective",
                                  hint="use objective: sft for this data, or a preference file")
            raise ConfigError(f"{where}a preference pair cannot train with objective sft", code="wrong_data_for_objective",
                              hint="set objective: dpo (or method: dpo) to tune on preferences")


def with_retrieved_context(data: DataConfig, tokenizer, train, validation, *, seed: int, base_model: str):
    """`data.rag`: both splits' questions gain retrieved chunks and distractors (see tunery.rag.raft)."""
    assert data.rag is not None, "only a config with data.rag retrieves"
    retriever = Retriever.open(data.rag)
    retriever.index.check_model(tokenizer, base_model)
    options = {"k": data.rag_k, "distractors": data.rag_distractors, "max_seq_len": data.max_seq_len}
    train, counts = add_retrieved_context(train, retriever, tokenizer, seed=seed, **options)
    validation, _ = add_retrieved_context(validation, retriever, tokenizer, seed=seed + 1, **options)
    return train, validation, {"rag_index": str(retriever.index.path), "rag_examples_with_context":
                               counts["with_context"], "rag_examples_without_context": counts["without_context"]}


def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch; the same (seed, epoch) always gives the same order."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()


def step_micro_batches(indices: list[int], *, batch_size: int, grad_accum: int, rank: int,
                       world_size: int) -> list[list[int]]:
    """This process's micro-batches of one optimizer step.

    The step's examples are cut into `grad_accum` consecutive micro-batches of `batch_size x
    world_size`; process `rank` takes every `world_size`-th example of each, so one process with
    batch B x W sees exactly the examples that W processes with batch B see together.
    """
    per_micro = batch_size * world_size
    if len(indices) > per_micro * grad_accum:
        raise ValueError(f"{len(indices)} examples do not fit {grad_accum} micro-batches of {per_micro}")
    batches = [indices[start:start + per_micro][rank::world_size] for start in range(0, len(indices), per_micro)]
    return [b for b in batches if b]
