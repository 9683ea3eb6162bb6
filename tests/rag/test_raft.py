"""Retrieval-aware training data (`data.rag`): retrieved chunks plus distractors, seeded, in real runs."""

from __future__ import annotations

import json

import pytest

import tunery
from tunery.config import TrainConfig
from tunery.rag import Retriever, build_index
from tunery.rag.raft import add_retrieved_context
from tunery.types import Conversation, Turn

FACTS = [f"The widget {name} is stored in room {room}." for name, room in
         [("alpha", "A1.10"), ("bravo", "B2.20"), ("charlie", "C3.30"), ("delta", "D4.40"), ("echo", "E1.50"),
          ("foxtrot", "F2.60")]]


@pytest.fixture
def widget_index(tmp_path, tiny_model_dir):
    (tmp_path / "rooms.md").write_text("\n\n".join(FACTS), encoding="utf-8")
    build_index([tmp_path / "rooms.md"], tmp_path / "idx", model=str(tiny_model_dir), chunk_tokens=32,
                overlap_tokens=0)
    return tmp_path / "idx"


def chats() -> list[Conversation]:
    return [Conversation(turns=(Turn("user", f"Where is the widget {name} stored?"),
                                Turn("assistant", f"In room {room}.", True)))
            for name, room in [("alpha", "A1.10"), ("bravo", "B2.20"), ("charlie", "C3.30")]]


def test_prompts_hold_the_retrieved_chunk_and_distractors_in_seeded_order(widget_index, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    retriever = Retriever.open(widget_index)
    out, counts = add_retrieved_context(chats(), retriever, tokenizer, k=1, distractors=2, max_seq_len=512, seed=3)
    assert counts == {"with_context": 3, "without_context": 0}
    for conversation, fact in zip(out, FACTS):
        prompt = conversation.turns[0].content
        assert fact in prompt and prompt.count("rooms.md") == 3  # the right chunk and two distractors
        assert prompt.endswith(f"Question: {chats()[out.index(conversation)].turns[0].content}")
        assert conversation.turns[1].train and conversation.turns[1].content.startswith("In room")
    again, _ = add_retrieved_context(chats(), retriever, tokenizer, k=1, distractors=2, max_seq_len=512, seed=3)
    assert again == out
    other, _ = add_retrieved_context(chats(), retriever, tokenizer, k=1, distractors=2, max_seq_len=512, seed=4)
    assert other != out
    tight, counts = add_retrieved_context(chats(), retriever, tokenizer, k=1, distractors=2, max_seq_len=40, seed=3)
    assert counts["without_context"] == 3 and tight == chats()


def test_training_with_data_rag_records_it(widget_index, tiny_model_dir, tmp_path):
    config = TrainConfig.model_validate({
        "base_model": str(tiny_model_dir), "output_dir": str(tmp_path / "run"),
        "train": {"max_steps": 2, "batch_size": 2, "precision": "fp32", "learning_rate": 1e-3, "warmup_steps": 0},
        "data": {"val_fraction": 0.0, "rag": str(widget_index), "rag_k": 1, "rag_distractors": 1}})
    tunery.train(config, train_conversations=chats(), quiet=True)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    text = json.dumps(run)
    assert '"rag_examples_with_context": 3' in text and str(widget_index) in text
