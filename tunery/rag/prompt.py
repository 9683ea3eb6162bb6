"""Put retrieved chunks into a chat prompt through a template, within the model's context.

When the prompt does not fit, the lowest-ranked chunks are dropped one by one; the question is
never cut. The template is the index's `prompt.txt` when it has one (edit it freely), else the
default below; it must hold `{context}` and `{question}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tunery.data.template import encode_prompt, encode_text
from tunery.errors import ConfigError, DataError, RetrievalError
from tunery.rag.retrieval import Hit, RagIndex, open_index
from tunery.safeio import read_text

DEFAULT_TEMPLATE = ("Answer the question using the context below.\n\n"
                    "Context:\n{context}\n\n"
                    "Question: {question}")
TEMPLATE_FILE = "prompt.txt"
_PLACEHOLDER = re.compile(r"\{context\}|\{question\}")
DEFAULT_K = 5


@dataclass(frozen=True)
class RagPrompt:
    """The messages a model sees, their token ids, and the chunks that made it into them."""

    messages: list[dict]
    prompt_ids: list[int]
    hits: list[Hit]
    retrieved: list[Hit]

    def citations(self) -> list[dict]:
        return [hit.citation() for hit in self.hits]


def check_template(template: str, where: str = "the prompt template") -> str:
    missing = [name for name in ("{context}", "{question}") if name not in template]
    if missing:
        raise ConfigError(f"{where} lacks {' and '.join(missing)}", code="invalid_template",
                          hint="a template holds {context} (the retrieved chunks) and {question} (the user's message)")
    return template


def read_template(index: RagIndex) -> str:
    path = index.path / TEMPLATE_FILE
    if path.is_file():  # strict UTF-8 and size-capped; a broken template is the index's fault, not the question's
        return check_template(read_text(path, what="prompt template", error=RetrievalError), str(path))
    return DEFAULT_TEMPLATE


def format_context(hits: list[Hit]) -> str:
    return "\n\n".join(f"[{i}] ({hit.label()}) {hit.text}" for i, hit in enumerate(hits, start=1))


def fill_template(template: str, question: str, hits: list[Hit]) -> str:
    # One pass over the template only, not str.format or chained replaces: documents and questions may hold
    # braces, even "{question}", and what they hold is never substituted.
    values = {"{context}": format_context(hits), "{question}": question}
    return _PLACEHOLDER.sub(lambda match: values[match.group(0)], template)


def with_context(messages: list[dict], hits: list[Hit], template: str) -> list[dict]:
    """The messages with the last user message wrapped in the template around `hits`."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "user")
    wrapped = dict(messages[last], content=fill_template(template, messages[last]["content"], hits))
    return [*messages[:last], wrapped, *messages[last + 1:]]


def question_of(messages: list[dict]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    if not users:
        raise DataError("retrieval needs a user message to search with", code="no_question")
    return users[-1]


def fit_prompt(messages: list[dict], hits: list[Hit], tokenizer, *, max_prompt_tokens: int,
               template: str = DEFAULT_TEMPLATE, tools: list[dict] | None = None,
               parallel_tool_calls: bool = True) -> RagPrompt:
    """The chat prompt with as many of `hits` (best first) as fit in `max_prompt_tokens`; `tools` (OpenAI
    function tools) go through the chat template as they do without retrieval."""
    def build(kept: list[Hit]) -> tuple[list[dict], list[int]]:
        wrapped = with_context(messages, kept, template)
        return wrapped, list(encode_prompt(tokenizer, wrapped, tools=tools, parallel_tool_calls=parallel_tool_calls))

    return _fit(build, hits, max_prompt_tokens)


def fit_text_prompt(text: str, hits: list[Hit], tokenizer, *, max_prompt_tokens: int,
                    template: str = DEFAULT_TEMPLATE) -> RagPrompt:
    """A plain-text prompt (no chat template, as `/v1/completions` takes it) filled into the template with
    as many of `hits` as fit; `messages` is then one user message holding the filled text."""
    def build(kept: list[Hit]) -> tuple[list[dict], list[int]]:
        filled = fill_template(template, text, kept)
        return [{"role": "user", "content": filled}], encode_text(tokenizer, filled)

    return _fit(build, hits, max_prompt_tokens)


def _fit(build, hits: list[Hit], max_prompt_tokens: int) -> RagPrompt:
    """The most of the best-ranked hits for which `build(kept)` fits; the question itself is never cut.

    A prompt grows with every chunk kept, so the count is found by bisection: a handful of encodings
    even when an index's top_k asks for thousands of chunks, not one per chunk dropped.
    """
    def fits(count: int):
        messages, ids = build(hits[:count])
        return (messages, ids) if len(ids) <= max_prompt_tokens else None

    best = fits(len(hits))
    if best is not None:
        return RagPrompt(messages=best[0], prompt_ids=best[1], hits=list(hits), retrieved=list(hits))
    low, high = 0, len(hits)  # hits[:low] is not yet known to fit; hits[:high] does not fit
    best_count = None
    while low < high:
        middle = (low + high) // 2
        found = fits(middle)
        if found is None:
            high = middle
        else:
            best, best_count, low = found, middle, middle + 1
    if best is None or best_count is None:
        _, ids = build([])
        raise DataError(f"the question alone is {len(ids)} tokens in the retrieval template, more than the "
                        f"{max_prompt_tokens} tokens the model's context leaves for a prompt",
                        code="context_length_exceeded",
                        hint="shorten the question, or allow fewer new tokens for the answer")
    return RagPrompt(messages=best[0], prompt_ids=best[1], hits=hits[:best_count], retrieved=list(hits))


@dataclass
class Retriever:
    """An index with its template and depth, as a `+rag:INDEX_DIR` reference uses it."""

    index: RagIndex
    template: str
    k: int = DEFAULT_K
    mode: str | None = None

    @classmethod
    def open(cls, path: str | Path, *, k: int | None = None, mode: str | None = None) -> Retriever:
        index = open_index(path)
        return cls(index=index, template=read_template(index),
                   k=k or int(index.manifest["settings"].get("top_k") or DEFAULT_K), mode=mode)

    def prompt(self, messages: list[dict], tokenizer, *, max_prompt_tokens: int, tools: list[dict] | None = None,
               parallel_tool_calls: bool = True) -> RagPrompt:
        """The last user message searched with and wrapped in the template; tool calls and results in the
        history, and `tools`, are rendered as `encode_prompt` renders them."""
        hits = self.index.search(question_of(messages), k=self.k, mode=self.mode)
        return fit_prompt(messages, hits, tokenizer, max_prompt_tokens=max_prompt_tokens, template=self.template,
                          tools=tools, parallel_tool_calls=parallel_tool_calls)

    def text_prompt(self, text: str, tokenizer, *, max_prompt_tokens: int) -> RagPrompt:
        """A plain-text prompt searched with as a whole and filled into the template around what was found."""
        hits = self.index.search(text, k=self.k, mode=self.mode)
        return fit_text_prompt(text, hits, tokenizer, max_prompt_tokens=max_prompt_tokens, template=self.template)
