"""Plain data types shared by every layer: conversations, locations, tokenized examples.

No torch here; tensors appear only in the layers below the CLI that need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Location:
    """Where an example came from: file and 1-based line (CSV: the file line of the row)."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Turn:
    """One message. `train` is True on assistant turns whose tokens carry loss.

    `tool_calls` are an assistant's function calls in OpenAI's shape with `arguments` as an object
    (what chat templates render); a `tool` turn answers the call named by `tool_call_id`.
    """

    role: str
    content: str
    train: bool = False
    tool_calls: tuple[dict, ...] = ()
    tool_call_id: str | None = None

    def message(self) -> dict:
        """The OpenAI-style message dict a chat template consumes."""
        message: dict = {"role": self.role, "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [dict(call) for call in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass(frozen=True)
class Conversation:
    """The one internal form of every example.

    `kind="chat"`: turns rendered with the model's chat template.
    `kind="text"`: a single raw document (continued pre-training), every token trained.
    `kind="preference"`: `turns` is the prompt plus the preferred answer, `rejected` the same prompt
    plus the answer not preferred (both answers trained, for DPO).
    `tools` are the OpenAI function tools (`{"type": "function", "function": {...}}`) the turns may call.
    """

    turns: tuple[Turn, ...]
    kind: Literal["chat", "text", "preference"] = "chat"
    location: Location | None = None
    rejected: tuple[Turn, ...] = ()
    tools: tuple[dict, ...] = ()
    parallel_tool_calls: bool = True

    @property
    def text(self) -> str:
        """The document text of a `kind="text"` example."""
        return self.turns[0].content if self.turns else ""

    def messages(self) -> list[dict]:
        """OpenAI-style message dicts (what chat templates consume)."""
        return [t.message() for t in self.turns]

    def preference_sides(self) -> tuple[Conversation, Conversation]:
        """(preferred, not preferred) of a preference example, each as a chat conversation."""
        return (Conversation(self.turns, "chat", self.location, tools=self.tools),
                Conversation(self.rejected, "chat", self.location, tools=self.tools))


@dataclass
class TokenizedExample:
    """Token ids and labels (-100 where no loss) for one example."""

    input_ids: list[int]
    labels: list[int]
    location: Location | None = None
    meta: dict = field(default_factory=dict)

    @property
    def num_trained(self) -> int:
        return sum(1 for x in self.labels if x != -100)
