"""Retrieval-aware training data (`data.rag`): each question's prompt gains the chunks retrieved for it
plus random distractor chunks, in shuffled order, through the same template `+rag:` uses at answer
time. The model learns to find the answer in a context that also holds noise, as in RAFT (Zhang et
al. 2024). Seeded: the same seed gives the same prompts.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from tunery.errors import DataError
from tunery.rag.prompt import Retriever, fit_prompt
from tunery.rag.retrieval import Hit
from tunery.types import Conversation, Turn

ANSWER_ROOM = 8  # tokens of the chat template around the answer


def add_retrieved_context(conversations: Sequence[Conversation], retriever: Retriever, tokenizer, *, k: int,
                          distractors: int, max_seq_len: int, seed: int) -> tuple[list[Conversation], dict]:
    """Chat examples with retrieved chunks and distractors in their last user turn; text examples as they are.

    Returns the examples and counts: how many gained context, and how many kept none because the
    question alone fills `max_seq_len`.
    """
    out, counts = [], {"with_context": 0, "without_context": 0}
    for number, conversation in enumerate(conversations):
        users = [i for i, t in enumerate(conversation.turns) if t.role == "user"]
        if conversation.kind != "chat" or not users:
            out.append(conversation)
            continue
        last = users[-1]
        turns = list(conversation.turns)
        rng = random.Random(seed * 1_000_003 + number)
        hits = retriever.index.search(turns[last].content, k=k, mode=retriever.mode)
        hits = shuffled(hits + pick_distractors(retriever, hits, distractors, rng), rng)
        answer_tokens = sum(len(tokenizer(t.content, add_special_tokens=False)["input_ids"]) for t in turns[last + 1:])
        messages = [{"role": t.role, "content": t.content} for t in turns[:last + 1]]
        try:
            prompt = fit_prompt(messages, hits, tokenizer, template=retriever.template,
                                max_prompt_tokens=max_seq_len - answer_tokens - ANSWER_ROOM)
        except DataError:
            counts["without_context"] += 1
            out.append(conversation)
            continue
        turns[last] = Turn(role="user", content=prompt.messages[-1]["content"], train=turns[last].train)
        out.append(Conversation(turns=tuple(turns), kind=conversation.kind, location=conversation.location))
        counts["with_context"] += 1
    return out, counts


def pick_distractors(retriever: Retriever, hits: list[Hit], count: int, rng: random.Random) -> list[Hit]:
    """`count` random chunks of the index that retrieval did not return."""
    taken = {hit.chunk["id"] for hit in hits}
    pool = len(retriever.index.chunks)
    if pool - len(taken) <= 0:
        return []
    picked: list[Hit] = []
    for row in rng.sample(range(pool), min(pool, count + len(taken))):
        if row not in taken and len(picked) < count:
            picked.append(Hit(rank=0, score=0.0, chunk=retriever.index.chunks[row]))
    return picked


def shuffled(hits: list[Hit], rng: random.Random) -> list[Hit]:
    order = list(hits)
    rng.shuffle(order)
    return order
