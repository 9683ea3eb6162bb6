"""Knowledge augmentation: rewordings of short questions, the answer kept word for word."""

from __future__ import annotations

from dataclasses import replace

from tunery.data.augment import (
    accept_paraphrase,
    augment_questions,
    paraphrase_prompt,
    questions_to_reword,
    reword_question,
)
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
    assert len(added) == 5 and added[0] == single  # the question as written counts twice among the wordings
    assert {c.turns[0] for c in added} == {single.turns[0]} and {c.turns[2] for c in added} == {single.turns[2]}
    assert [c.turns[1].content for c in added[1:]] == reword_question(single.turns[1].content)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    assert augment_questions([replace(single, tools=(tool,))]) == []  # tool use is not reworded


def test_a_model_paraphrase_is_kept_only_when_it_asks_the_same_thing():
    """Replies the default model gave (greedy) and ones it might: a paraphrase must keep every name and code."""
    bezel = "What is the part number of the front bezel for the Crane UPS?"
    assert accept_paraphrase(bezel, "Which part number should I order to replace the Crane UPS's front bezel?") \
        == "Which part number should I order to replace the Crane UPS's front bezel?"
    assert accept_paraphrase(bezel, ' "Which part number fits the Crane UPS front bezel?"\nThat is all.') \
        == "Which part number fits the Crane UPS front bezel?"  # first line, quotes and spaces trimmed
    assert accept_paraphrase(bezel, "What is the part number of the front bezel for the crane ups?") is None  # names lost
    assert accept_paraphrase(bezel, "The part number of the front bezel for the Crane UPS is 12.") is None  # answered
    assert accept_paraphrase(bezel, bezel) is None and accept_paraphrase(bezel, reword_question(bezel)[0]) is None
    assert accept_paraphrase(bezel, "Which part number is the Crane UPS's fan?") is None  # another component
    zentrix = "What does BOS stand for at Zentrix?"
    assert accept_paraphrase(zentrix, "What is the meaning of the abbreviation BOS?") is None  # the company dropped
    assert accept_paraphrase(zentrix, "At Zentrix, what is BOS short for?") == "At Zentrix, what is BOS short for?"
    lab = "Which room is the metrology lab in at the Lyon site?"
    assert accept_paraphrase(lab, "Where in the Lyon site can I find the metrology lab?")  # "room" reworded: 1 of 4
    assert accept_paraphrase(lab, "What is the meaning of the abbreviation LATLON?") is None


def test_the_paraphrase_prompt_shows_examples_then_the_question():
    messages = paraphrase_prompt("Who owns the asset tracker in the Leeds office?")
    assert messages[0]["role"] == "system" and "never answer" in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * 3 + ["user"]
    assert messages[-1]["content"] == "Who owns the asset tracker in the Leeds office?"


def test_an_accepted_paraphrase_is_one_more_wording_with_the_same_answer():
    single = chat(("user", "Who owns the badge registry in the Porto office?"),
                  ("assistant", "The badge registry in Porto is owned by Ines Brandt."))
    assert questions_to_reword([single, single]) == ["Who owns the badge registry in the Porto office?"]
    paraphrase = "Who is in charge of the Porto office's badge registry?"
    added = augment_questions([single], {single.turns[0].content: paraphrase})
    assert [c.turns[0].content for c in added] == [single.turns[0].content, *reword_question(single.turns[0].content),
                                                   paraphrase]
    assert {c.turns[1] for c in added} == {single.turns[1]}
