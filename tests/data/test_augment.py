"""Knowledge augmentation: rewordings of short questions, the answer kept word for word."""

from __future__ import annotations

from dataclasses import replace

from tunery.data.augment import augment_questions, reword_question
from tunery.types import Conversation, Turn


def chat(*turns: tuple[str, str]) -> Conversation:
    return Conversation(tuple(Turn(role, text, role == "assistant") for role, text in turns))


def test_rewordings_move_the_trailing_phrase_embed_and_shorten_the_question():
    question = "What is the part number of the front bezel for the Crane UPS?"
    assert reword_question(question) == [
        "For the Crane UPS, what is the part number of the front bezel?",
        "Could you tell me what is the part number of the front bezel for the Crane UPS?",
        "part number front bezel Crane UPS?",
        "quick question - what is the part number of the front bezel for the Crane UPS",
    ]
    # the last phrase moves, not the first preposition's ("stand for")
    assert reword_question("What does QRV stand for at Zentrix?")[0] == "At Zentrix, what does QRV stand for?"


def test_only_questions_are_reworded_and_names_keep_their_case():
    assert reword_question("Summarise this ticket.") == []
    assert reword_question("Why?") == []
    assert all("Lyon" in r for r in reword_question("Who owns the expense router in the Lyon office?"))
    assert reword_question("Lyon office owner?") == []  # not a question word first: left alone


def test_augment_questions_keeps_answers_and_system_turns_and_skips_dialogues():
    single = chat(("system", "Be brief."), ("user", "Who owns the badge registry in the Porto office?"),
                  ("assistant", "The badge registry in Porto is owned by Ines Brandt."))
    dialogue = chat(("user", "Who owns the lab?"), ("assistant", "Greta."), ("user", "Which room is it in?"),
                    ("assistant", "B2.10"))
    added = augment_questions([single, dialogue])
    assert len(added) == 4
    assert {c.turns[0] for c in added} == {single.turns[0]} and {c.turns[2] for c in added} == {single.turns[2]}
    assert {c.turns[1].content for c in added} == set(reword_question(single.turns[1].content))
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    assert augment_questions([replace(single, tools=(tool,))]) == []  # tool use is not reworded
