"""Tool calling through the chat template: tool definitions, assistant tool calls and tool results.

A template that renders them itself (its `tools` argument, `tool_calls` and role `tool`) gets them as
they are, when it writes calls in a form the server can read back: `<tool_call>` JSON `</tool_call>`
(Qwen, Hermes), Llama 3.1's bare `{"name": ..., "parameters": ...}` answer, or Mistral's `[TOOL_CALLS]`
list (whose call ids must be 9 letters or digits: others are mapped). Any other template gets
them in the Hermes form as plain text: a system message listing the tools, calls in the assistant's
content, results as user messages. Knows message dicts and templates, not files or HTTP.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_PROBE_TOOL = {"type": "function", "function": {
    "name": "tunery_probe", "description": "tunery probe description",
    "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}}}}
_PROBE_MESSAGES = [
    {"role": "user", "content": "probe question"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "callprobe", "type": "function", "function": {
        "name": "tunery_probe", "arguments": {"probe_arg": "probe_value"}}}]},
    {"role": "tool", "tool_call_id": "callprobe", "content": "probe_result"},
]


@dataclass(frozen=True)
class ToolSyntax:
    """How a model writes its calls: `open` + JSON + `close` each, the JSON naming the function under "name"
    and its arguments under `arguments_key`. An empty `open` means the whole answer is one call."""

    open: str
    close: str
    arguments_key: str = "arguments"
    parallel: bool = True  # the template renders several calls in one assistant message
    as_list: bool = False  # the calls are one JSON list after `open` (Mistral), not one JSON object each
    short_ids: bool = False  # the template takes only call ids of 9 letters or digits (Mistral)


HERMES = ToolSyntax(TOOL_OPEN, TOOL_CLOSE)
# Llama 3.1/3.2/3.3: the answer is the JSON, ended by the end-of-turn token; one call per message.
LLAMA_JSON = ToolSyntax("", "", "parameters", parallel=False)
# Mistral v0.3 and its fine-tunes: `[TOOL_CALLS]` (a special token) and a JSON list of calls.
MISTRAL_LIST = ToolSyntax("[TOOL_CALLS]", "", as_list=True, short_ids=True)
_NATIVE: dict[str, ToolSyntax | None] = {}  # template text -> its syntax when it renders tools itself


def native_tool_syntax(tokenizer) -> ToolSyntax | None:
    """How calls are written when the template renders tools itself (in a form read back here), else None."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    if template not in _NATIVE:
        _NATIVE[template] = _probe_syntax(tokenizer)
    return _NATIVE[template]


def native_tool_tags(tokenizer) -> tuple[str, str] | None:
    """The (open, close) text around a call when the template renders tools itself, else None."""
    syntax = native_tool_syntax(tokenizer)
    return None if syntax is None else (syntax.open, syntax.close)


def _probe_syntax(tokenizer) -> ToolSyntax | None:
    try:
        rendered = tokenizer.apply_chat_template(_PROBE_MESSAGES, tools=[_PROBE_TOOL], tokenize=False,
                                                 add_generation_prompt=True)
    except Exception:  # a template that cannot render these roles at all
        return None
    if not all(word in rendered for word in ("tunery probe description", "probe_value", "probe_result")):
        return None
    if '{"name": "tunery_probe", "parameters": {"probe_arg": "probe_value"}}' in rendered:
        return LLAMA_JSON
    if '[TOOL_CALLS] [{"name": "tunery_probe", "arguments": {"probe_arg": "probe_value"}' in rendered:
        return MISTRAL_LIST
    call = rendered.find('"probe_value"')
    start, end = rendered.rfind(TOOL_OPEN, 0, call), rendered.find(TOOL_CLOSE, call)
    brace = rendered.find("{", start)
    if start < 0 or end < 0 or brace < 0 or brace > call:
        return None
    closing = rendered.rfind("}", call, end)
    return ToolSyntax(rendered[start:brace], rendered[closing + 1:end + len(TOOL_CLOSE)])


def render_tool_messages(tokenizer, messages: list[dict], tools: list[dict] | None,
                         parallel: bool = True) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) to hand the template: as they are when it renders tools, else the Hermes text.

    `tools` are OpenAI's `{"type": "function", "function": {...}}`; call arguments are objects. The
    Hermes form may add a system message in front, so the list can grow by one at its start.
    """
    if not tools and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return messages, None
    syntax = native_tool_syntax(tokenizer)
    if syntax is not None:
        return ([short_call_ids(m) for m in messages] if syntax.short_ids else messages), tools or None
    rendered = [hermes_message(m) for m in messages]
    if not tools:
        return rendered, None
    prompt = tools_prompt([t["function"] for t in tools], parallel)
    if rendered and rendered[0]["role"] == "system":
        return [{**rendered[0], "content": rendered[0]["content"] + "\n\n" + prompt}, *rendered[1:]], None
    return [{"role": "system", "content": prompt}, *rendered], None


def short_call_ids(message: dict) -> dict:
    """The message with its call ids (or the id its result answers) as 9 letters or digits, the same for
    the same id, as Mistral's template demands; an id that already is one stays."""
    def short(call_id: str | None) -> str:
        text = call_id or ""
        return text if len(text) == 9 and text.isalnum() else hashlib.sha256(text.encode()).hexdigest()[:9]

    if message.get("tool_calls"):
        return {**message, "tool_calls": [{**c, "id": short(c.get("id"))} for c in message["tool_calls"]]}
    if message["role"] == "tool":
        return {**message, "tool_call_id": short(message.get("tool_call_id"))}
    return message


def hermes_message(message: dict) -> dict:
    """A message with its tool calls (or its tool result) written out as text."""
    if message["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{message['content']}\n</tool_response>"}
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        function = call["function"]
        text += TOOL_OPEN + json.dumps({"name": function["name"], "arguments": function["arguments"]}) + TOOL_CLOSE
    return {"role": message["role"], "content": text}


def tools_prompt(functions: list[dict], parallel: bool) -> str:
    """The Hermes system prompt listing function definitions and how to call them."""
    listed = "\n".join(json.dumps({"type": "function", "function": f}) for f in functions)
    many = "one or more calls, each" if parallel else "one call"
    return ("You may call functions to answer. The functions are:\n<tools>\n" + listed + "\n</tools>\n"
            f"To call, reply with {many} as {TOOL_OPEN}{{\"name\": NAME, \"arguments\": {{...}}}}{TOOL_CLOSE}.")


def tool_syntax(tokenizer) -> ToolSyntax:
    """How the model writes calls: its template's way, or the Hermes tags."""
    return native_tool_syntax(tokenizer) or HERMES
