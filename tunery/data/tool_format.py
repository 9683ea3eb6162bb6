"""The tool-calling parts of chat records (OpenAI's `tools`, assistant `tool_calls`, role `tool`), validated
with located problems and normalised to what chat templates take (call arguments as objects).

Knows keys and shapes; rendering them through a template is `tools.py`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tunery.data.problems import ProblemLog, type_name
from tunery.types import Turn

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # fullmatch: `$` would pass "name\n"


def check_tools(value: Any, log: ProblemLog, **where) -> tuple[dict, ...] | None:
    """OpenAI function tools (or bare function definitions, or either as JSON text), normalised."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            log.error("wrong_type", "'tools' is text but not JSON", field="tools", **where)
            return None
    if not isinstance(value, list):
        log.error("wrong_type", f"'tools' must be a list of tools, found {type_name(value)}", field="tools", **where)
        return None
    tools: list[dict] = []
    for index, tool in enumerate(value):
        path = f"tools[{index}]"
        function = tool.get("function", tool) if isinstance(tool, dict) and tool.get("type", "function") == "function" \
            else None
        if not isinstance(function, dict):
            log.error("invalid_tool", "a tool must be {\"type\": \"function\", \"function\": {...}}", field=path, **where)
            return None
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            log.error("invalid_tool", f"the function name {name!r} must be 1-64 letters, digits, _ or -",
                      field=f"{path}.function.name", **where)
            return None
        if not isinstance(function.get("parameters", {}), dict):
            log.error("invalid_tool", "'parameters' must be a JSON schema object", field=f"{path}.function.parameters",
                      **where)
            return None
        if name in {t["function"]["name"] for t in tools}:
            log.error("invalid_tool", f"two tools are named {name!r}", field=f"{path}.function.name", **where)
            return None
        tools.append({"type": "function", "function": dict(function)})
    return tuple(tools)


def convert_tool_calls(value: Any, path: str, log: ProblemLog, **where) -> tuple[dict, ...] | None:
    """An assistant's `tool_calls` in OpenAI's shape, with the JSON `arguments` text parsed to an object."""
    if not isinstance(value, list) or not value:
        log.error("wrong_type", f"{path} must be a non-empty list of calls, found {type_name(value)}",
                  field=path, **where)
        return None
    calls = []
    for index, call in enumerate(value):
        at = f"{path}[{index}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            log.error("invalid_tool_call", "a tool call must be {\"type\": \"function\", \"function\": "
                      "{\"name\": ..., \"arguments\": ...}}", field=at, **where)
            return None
        if not isinstance(function.get("name"), str) or not function["name"]:
            log.error("invalid_tool_call", "the call names no function", field=f"{at}.function.name", **where)
            return None
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                log.error("invalid_tool_arguments", "the call's arguments are not JSON",
                          field=f"{at}.function.arguments", **where)
                return None
        if not isinstance(arguments, dict):
            log.error("invalid_tool_arguments", f"the call's arguments must be a JSON object, found "
                      f"{type_name(arguments)}", field=f"{at}.function.arguments", **where)
            return None
        call_id = call.get("id", f"call_{index}")
        calls.append({"id": str(call_id), "type": "function",
                      "function": {"name": function["name"], "arguments": arguments}})
    return tuple(calls)


def check_tool_turns(turns: list[Turn], tools: tuple[dict, ...], path: str, log: ProblemLog, **where) -> bool:
    """Each tool result follows the calls it answers; each call names a listed tool (when tools are listed)."""
    names = {t["function"]["name"] for t in tools}
    open_ids: set[str] | None = None  # ids of the calls the last assistant turn made
    for index, turn in enumerate(turns):
        if turn.role == "tool":
            if open_ids is None:
                log.error("tool_without_call", "a tool message must follow an assistant message with tool_calls",
                          field=f"{path}[{index}].role", **where)
                return False
            if turn.tool_call_id is not None and turn.tool_call_id not in open_ids:
                log.error("unknown_tool_call_id", f"tool_call_id {turn.tool_call_id!r} answers no call of the "
                          "assistant message before it", field=f"{path}[{index}].tool_call_id", **where)
                return False
            continue
        open_ids = {c["id"] for c in turn.tool_calls} if turn.tool_calls else None
        for number, call in enumerate(turn.tool_calls):
            if names and call["function"]["name"] not in names:
                log.error("unknown_tool", f"the call names {call['function']['name']!r}, which is not in tools",
                          field=f"{path}[{index}].tool_calls[{number}].function.name",
                          hint=f"tools lists: {', '.join(sorted(names))}", **where)
                return False
    return True
