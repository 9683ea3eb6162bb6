"""Tool calling through the chat template: tool definitions, assistant tool calls and tool results.

A template that renders them itself (its `tools` argument, `tool_calls` and role `tool`, writing calls
as `<tool_call>` JSON `</tool_call>`, as Qwen's and Hermes' do) gets them as they are; any other
template gets them in the Hermes form as plain text: a system message listing the tools, calls in the
assistant's content, results as user messages. Knows message dicts and templates, not files or HTTP.
"""

from __future__ import annotations

import json

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"
_PROBE_TOOL = {"type": "function", "function": {
    "name": "tunery_probe", "description": "tunery probe description",
    "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}}}}
_PROBE_MESSAGES = [
    {"role": "user", "content": "probe question"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "call_probe", "type": "function", "function": {
        "name": "tunery_probe", "arguments": {"probe_arg": "probe_value"}}}]},
    {"role": "tool", "tool_call_id": "call_probe", "content": "probe_result"},
]
_NATIVE_TAGS: dict[str, tuple[str, str] | None] = {}  # template text -> (open, close) when native


def native_tool_tags(tokenizer) -> tuple[str, str] | None:
    """The (open, close) text around a call when the template renders tools itself, else None."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str):
        return None
    if template not in _NATIVE_TAGS:
        _NATIVE_TAGS[template] = _probe_tags(tokenizer)
    return _NATIVE_TAGS[template]


def _probe_tags(tokenizer) -> tuple[str, str] | None:
    try:
        rendered = tokenizer.apply_chat_template(_PROBE_MESSAGES, tools=[_PROBE_TOOL], tokenize=False,
                                                 add_generation_prompt=True)
    except Exception:  # a template that cannot render these roles at all
        return None
    if not all(word in rendered for word in ("tunery probe description", "probe_value", "probe_result")):
        return None
    call = rendered.find('"probe_value"')
    start, end = rendered.rfind(TOOL_OPEN, 0, call), rendered.find(TOOL_CLOSE, call)
    brace = rendered.find("{", start)
    if start < 0 or end < 0 or brace < 0 or brace > call:
        return None
    closing = rendered.rfind("}", call, end)
    return rendered[start:brace], rendered[closing + 1:end + len(TOOL_CLOSE)]


def render_tool_messages(tokenizer, messages: list[dict], tools: list[dict] | None,
                         parallel: bool = True) -> tuple[list[dict], list[dict] | None]:
    """(messages, tools) to hand the template: as they are when it renders tools, else the Hermes text.

    `tools` are OpenAI's `{"type": "function", "function": {...}}`; call arguments are objects. The
    Hermes form may add a system message in front, so the list can grow by one at its start.
    """
    if not tools and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return messages, None
    if native_tool_tags(tokenizer) is not None:
        return messages, tools or None
    rendered = [hermes_message(m) for m in messages]
    if not tools:
        return rendered, None
    prompt = tools_prompt([t["function"] for t in tools], parallel)
    if rendered and rendered[0]["role"] == "system":
        return [{**rendered[0], "content": rendered[0]["content"] + "\n\n" + prompt}, *rendered[1:]], None
    return [{"role": "system", "content": prompt}, *rendered], None


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


def tool_call_tags(tokenizer) -> tuple[str, str]:
    """The text the model writes around each call: its template's, or the Hermes tags."""
    return native_tool_tags(tokenizer) or (TOOL_OPEN, TOOL_CLOSE)
