"""Knowledge augmentation: several rewordings of each question of short question/answer data.

A fact trained in one wording is recalled in that wording; trained in several, it is recalled when
asked another way (research on knowledge extraction: "Physics of Language Models 3.1"). The
rewordings here are generic English rewrites of the question (the answer is kept word for word),
so they know nothing of any dataset. Deciding *when* data is fact-like is the training layer's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from tunery.types import Conversation

# Words a keyword-style query leaves out ("part number front bezel Crane UPS?").
FUNCTION_WORDS = frozenset(
    "a an the of for in at on to is are was were be does do did what which who whom whose where when how "
    "can could would should will i me my you your please tell".split())
# A trailing prepositional phrase that can move to the front ("..., for the Crane UPS?").
TRAILING_PHRASE = re.compile(r"^(?P<head>.+)\s+(?P<prep>for|in|at|on|from|with|by)\s+(?P<tail>[^?,]+?)\s*\?$")
QUESTION_START = re.compile(r"^(what|who|which|where|when|how|why|whose|is|are|does|do|can)\b", re.IGNORECASE)


def reword_question(question: str) -> list[str]:
    """Rewordings of one question, distinct from it and from each other (possibly none).

    Four rewrites: the trailing place or owner phrase moved to the front, the question embedded in a
    request, a keyword query, and a casual lower-case form. Names and codes keep their case.
    """
    q = " ".join(question.split())
    if not q.endswith("?") or not QUESTION_START.match(q) or len(q.split()) < 3:
        return []
    body = lower_first(q)
    candidates = [front_trailing_phrase(q), f"Could you tell me {body}", keyword_query(q),
                  f"quick question - {body[:-1]}"]
    seen = {q.casefold()}
    out = []
    for candidate in candidates:
        if candidate and candidate.casefold() not in seen:
            seen.add(candidate.casefold())
            out.append(candidate)
    return out


def lower_first(text: str) -> str:
    """Lower-case the first word only when it is a plain question word (never a name)."""
    first, space, rest = text.partition(" ")
    return first.lower() + space + rest if QUESTION_START.match(first) else text


def front_trailing_phrase(question: str) -> str | None:
    match = TRAILING_PHRASE.match(question)
    if not match or len(match["head"].split()) < 2:
        return None
    phrase = f"{match['prep'].capitalize()} {match['tail']}"
    return f"{phrase}, {lower_first(match['head'])}?"


def keyword_query(question: str) -> str | None:
    words = [w for w in re.findall(r"[\w'.-]+", question.rstrip("?")) if w.lower() not in FUNCTION_WORDS]
    return " ".join(words) + "?" if len(words) >= 2 else None


def single_question(conv: Conversation) -> int | None:
    """Index of the user turn of a one-question, one-answer chat (a system turn allowed); else None.

    Tool use is left alone: a question whose answer is a function call is not a fact to reword.
    """
    roles = [t.role for t in conv.turns]
    if conv.kind != "chat" or roles not in (["user", "assistant"], ["system", "user", "assistant"]) \
            or conv.tools or conv.turns[-1].tool_calls:
        return None
    return len(roles) - 2


def augment_questions(conversations: Sequence[Conversation]) -> list[Conversation]:
    """The added examples: each single-question chat once per rewording of its question, same answer."""
    added: list[Conversation] = []
    for conv in conversations:
        index = single_question(conv)
        if index is None:
            continue
        user = conv.turns[index]
        for reworded in reword_question(user.content):
            turns = list(conv.turns)
            turns[index] = replace(user, content=reworded)
            added.append(replace(conv, turns=tuple(turns)))
    return added
