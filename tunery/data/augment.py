"""Knowledge augmentation: several rewordings of each question of short question/answer data.

A fact trained in one wording is recalled in that wording; trained in several, it is recalled when
asked another way (research on knowledge extraction: "Physics of Language Models 3.1"). The
rewordings here are generic English rewrites of the question (the answer is kept word for word),
so they know nothing of any dataset. Deciding *when* data is fact-like is the training layer's, and so
is asking the base model for paraphrases (`data.augment: model`): this module writes the prompt and
decides which paraphrases keep the question's meaning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
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


# The base model is shown a few rewordings (generic, no dataset's words) before the question to reword.
PARAPHRASE_SYSTEM = "You rewrite a question in other words, keeping every name, number and code. You never answer it."
PARAPHRASE_SHOTS = (
    ("What is the opening time of the museum in Bergen?", "When does the Bergen museum open?"),
    ("Who wrote the safety manual for the north warehouse?",
     "Which person is the author of the north warehouse's safety manual?"),
    ("What does HR stand for?", "What is the meaning of the abbreviation HR?"),
)
WORD = re.compile(r"[A-Za-z0-9][\w.'-]*[A-Za-z0-9]|[A-Za-z0-9]")


def paraphrase_prompt(question: str) -> list[dict]:
    """Chat messages asking a model to reword `question` (its answer is a question, not an answer)."""
    messages = [{"role": "system", "content": PARAPHRASE_SYSTEM}]
    for asked, reworded in PARAPHRASE_SHOTS:
        messages += [{"role": "user", "content": asked}, {"role": "assistant", "content": reworded}]
    return messages + [{"role": "user", "content": question}]


def accept_paraphrase(question: str, paraphrase: str) -> str | None:
    """`paraphrase` (a model's reply) when it asks what `question` asks; else None.

    Kept only when it is one question that names everything the question names (every word with a capital
    or a digit: the names and codes that pick out the fact, so the trained answer and its key stay right),
    changes at most a third of its other words (one, in a short question), and is not the question itself
    or one of its template rewordings. A small model often answers instead, drops a name, or repeats the question.
    """
    text = " ".join(paraphrase.strip().split("\n")[0].split()).strip("\"' ")
    if not text.endswith("?") or len(text.split()) > 2 * len(question.split()) + 4:
        return None
    if text.casefold() in {q.casefold() for q in [question, *reword_question(question)]}:
        return None
    asked, reworded = words_of(question), words_of(text)
    names = {w for w in asked[1:] if any(c.isupper() or c.isdigit() for c in w) and w != "I"}
    if not names <= set(reworded):
        return None
    others = {w.lower() for w in asked if w not in names and w.lower() not in FUNCTION_WORDS}
    kept = others & {w.lower() for w in reworded}
    return text if len(others - kept) <= max(1, len(others) // 3) else None


def words_of(text: str) -> list[str]:
    """Words without a possessive 's ("UPS's" is "UPS")."""
    return [w.removesuffix("'s") for w in WORD.findall(text)]


def single_question(conv: Conversation) -> int | None:
    """Index of the user turn of a one-question, one-answer chat (a system turn allowed); else None.

    Tool use is left alone: a question whose answer is a function call is not a fact to reword.
    """
    roles = [t.role for t in conv.turns]
    if conv.kind != "chat" or roles not in (["user", "assistant"], ["system", "user", "assistant"]) \
            or conv.tools or conv.turns[-1].tool_calls:
        return None
    return len(roles) - 2


def questions_to_reword(conversations: Sequence[Conversation]) -> list[str]:
    """The questions augment_questions rewords, each once."""
    found = [conv.turns[i].content for conv in conversations if (i := single_question(conv)) is not None]
    return list(dict.fromkeys(found))


def augment_questions(conversations: Sequence[Conversation],
                      paraphrases: Mapping[str, str] | None = None) -> list[Conversation]:
    """The added examples: each single-question chat once per rewording of its question, same answer,
    and once more as written.

    The wording a fact was taught in is the one its users were shown, so it counts twice among the
    wordings: spread evenly, 15 passes over 5 wordings left each wording 3 passes and trained questions
    were recalled less often (83.7% of the 300 bundled facts, against 98.7% from 15 passes of one).
    `paraphrases` (question -> accepted paraphrase, data.augment: model) adds one more wording each.
    """
    added: list[Conversation] = []
    for conv in conversations:
        index = single_question(conv)
        if index is None:
            continue
        user = conv.turns[index]
        extra = (paraphrases or {}).get(user.content)
        rewordings = reword_question(user.content) + ([extra] if extra else [])
        if rewordings:
            added.append(conv)
        for reworded in rewordings:
            turns = list(conv.turns)
            turns[index] = replace(user, content=reworded)
            added.append(replace(conv, turns=tuple(turns)))
    return added
