"""The dataset formats (chat, instruction, prompt-completion, text, preference): detection and conversion.

Each raw record becomes one `Conversation` or located problems; this module knows keys and roles,
not files or encodings.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any

from tunery.data.problems import ProblemLog, type_name
from tunery.data.readers import RawRecord
from tunery.data.tool_format import check_tool_turns, check_tools, convert_tool_calls
from tunery.types import ROLES, Conversation, Location, Turn

# format -> (required keys, optional keys)
FORMAT_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # OpenAI's chat fine-tuning format, tool calling included (`tools`, assistant `tool_calls`, role `tool`).
    "chat": (frozenset({"messages"}), frozenset({"tools", "parallel_tool_calls"})),
    # ShareGPT: {"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]} (FastChat, Axolotl);
    # LLaMA-Factory's tool turns (`function_call`, `observation`) with `tools` as JSON text.
    "sharegpt": (frozenset({"conversations"}), frozenset({"tools"})),
    "instruction": (frozenset({"instruction", "output"}), frozenset({"input"})),
    "prompt_completion": (frozenset({"prompt", "completion"}), frozenset()),
    "text": (frozenset({"text"}), frozenset()),
    # OpenAI's preference fine-tuning format (DPO).
    "preference": (frozenset({"input", "preferred_output", "non_preferred_output"}), frozenset()),
}
# A key names a format only when no other format has it (`input` is in instruction and preference).
_KEY_OWNERS: dict[str, set[str]] = {}
for _name, (_req, _opt) in FORMAT_KEYS.items():
    for _key in _req | _opt:
        _KEY_OWNERS.setdefault(_key, set()).add(_name)
_FORMAT_OF_KEY = {key: next(iter(owners)) for key, owners in _KEY_OWNERS.items() if len(owners) == 1}
INPUT_KEYS = frozenset({"messages", "tools", "parallel_tool_calls"})
MESSAGE_KEYS = frozenset({"role", "content", "weight", "tool_calls", "tool_call_id"})
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class FormatState:
    """Per-file memory: the file's format (from its first example) and keys seen but ignored."""

    file_format: str | None = None
    ignored_keys: dict[str, list[int]] = field(default_factory=dict)  # "key" -> [first line, count]


def detect_format(keys: set[str]) -> tuple[str | None, str, str]:
    """(format, problem code, message): the format whose keys appear, or why none does."""
    named = sorted({_FORMAT_OF_KEY[k] for k in keys if k in _FORMAT_OF_KEY})
    if not named:
        shown = ", ".join(sorted(map(str, keys))[:8]) or "none"
        return None, "unknown_format", f"no known format's keys (found: {shown})"
    if len(named) > 1:
        return None, "ambiguous_format", f"keys of several formats at once: {', '.join(named)}"
    return named[0], "", ""


def convert_record(record: RawRecord, state: FormatState, log: ProblemLog) -> Conversation | None:
    """One raw record to a Conversation, or None with every problem in it logged."""
    where: dict[str, Any] = {"file": record.file, "line": record.line}
    value = record.value
    if not isinstance(value, dict):
        log.error("not_an_object", f"expected a JSON object, found {type_name(value)}", **where)
        return None
    fmt, code, message = detect_format(set(value))
    if fmt is None:
        log.error(code, message, **where)
        return None
    if state.file_format is None:
        state.file_format = fmt
    elif fmt != state.file_format:
        log.error("mixed_formats", f"this example is {fmt} but the file's first example is {state.file_format}",
                  **where)
        return None
    errors_before = log.error_count
    required, optional = FORMAT_KEYS[fmt]
    for key in sorted(required - set(value)):
        log.error("missing_key", f"missing key {key!r} of the {fmt} format", field=key, **where)
    _check_unknown_keys(value, required | optional, "", state, log, **where)
    if log.error_count > errors_before:
        return None
    location = Location(record.file, record.line)
    if fmt == "chat":
        return _convert_chat(value["messages"], location, state, log, value)
    if fmt == "sharegpt":
        return _convert_sharegpt(value["conversations"], location, state, log, value)
    if fmt == "preference":
        return _convert_preference(value, location, state, log)
    if fmt == "text":
        text = _check_text(value["text"], "text", log, **where)
        return None if text is None else Conversation((Turn("assistant", text, True),), "text", location)
    prompt_key, answer_key = ("instruction", "output") if fmt == "instruction" else ("prompt", "completion")
    prompt = _check_text(value[prompt_key], prompt_key, log, **where)
    answer = _check_text(value[answer_key], answer_key, log, **where)
    extra = None
    if fmt == "instruction" and value.get("input") not in (None, ""):
        extra = _check_text(value["input"], "input", log, allow_blank=True, **where)
        if extra is None:
            return None
    if prompt is None or answer is None:
        return None
    if extra and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return Conversation((Turn("user", prompt), Turn("assistant", answer, True)), "chat", location)


def _convert_chat(messages: Any, location: Location, state: FormatState, log: ProblemLog,
                  record: dict | None = None, path: str = "messages") -> Conversation | None:
    where: dict[str, Any] = {"file": location.file, "line": location.line}
    record = record or {}
    tools = check_tools(record["tools"], log, **where) if "tools" in record else ()
    parallel = record.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        log.error("wrong_type", f"'parallel_tool_calls' must be true or false, found {type_name(parallel)}",
                  field="parallel_tool_calls", **where)
    if tools is None or not isinstance(parallel, bool):
        return None
    if not isinstance(messages, list):
        log.error("wrong_type", f"'messages' must be a list of messages, found {type_name(messages)}",
                  field="messages", **where)
        return None
    if not messages:
        log.error("no_messages", "'messages' is empty", field="messages", **where)
        return None
    errors_before = log.error_count
    turns = [_convert_message(m, f"messages[{i}]", state, log, **where) for i, m in enumerate(messages)]
    if log.error_count > errors_before:
        return None
    for index, turn in enumerate(turns):
        if turn.role == "system" and index > 0:
            log.error("system_not_first", f"system message at position {index}; it must be the first",
                      field=f"messages[{index}].role", **where)
            return None
    if not any(t.role == "assistant" for t in turns):
        log.error("no_assistant", "no assistant message", field="messages", **where)
        return None
    if not check_tool_turns(turns, tools, path, log, **where):
        return None
    if not any(t.train for t in turns):
        log.warning("no_trained_turn", "every assistant message has weight 0; example skipped",
                    field="messages", **where)
        return None
    return Conversation(tuple(turns), "chat", location, tools=tools, parallel_tool_calls=parallel)


SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system", "tool": "tool", "observation": "tool",
                  "function_call": "assistant"}


def _convert_sharegpt(turns: Any, location: Location, state: FormatState, log: ProblemLog,
                      record: dict) -> Conversation | None:
    """ShareGPT turns (`from`, `value`) as chat messages, each problem located at conversations[i]."""
    where: dict[str, Any] = {"file": location.file, "line": location.line}
    if not isinstance(turns, list):
        log.error("wrong_type", f"'conversations' must be a list of turns, found {type_name(turns)}",
                  field="conversations", **where)
        return None
    messages = []
    for index, turn in enumerate(turns):
        path = f"conversations[{index}]"
        if not isinstance(turn, dict):
            log.error("wrong_type", f"a turn must be an object, found {type_name(turn)}", field=path, **where)
            return None
        for key in sorted({"from", "value"} - set(turn)):
            log.error("missing_key", f"turn has no {key!r}", field=f"{path}.{key}", **where)
            return None
        speaker = turn["from"]
        if speaker not in SHAREGPT_ROLES:
            log.error("unknown_role", f"unknown speaker {speaker!r}", field=f"{path}.from",
                      hint=f"'from' must be one of: {', '.join(sorted(SHAREGPT_ROLES))}", **where)
            return None
        text = _check_text(turn["value"], f"{path}.value", log, **where)
        if text is None:
            return None
        if speaker == "function_call":  # the value is the call (or a list of calls) as JSON
            try:
                calls = json.loads(text)
            except ValueError:
                log.error("invalid_tool_call", "a function_call turn's value must be the call as JSON",
                          field=f"{path}.value", **where)
                return None
            calls = calls if isinstance(calls, list) else [calls]
            messages.append({"role": "assistant", "content": None, "tool_calls": [
                {"type": "function", "function": c if not isinstance(c, dict) else
                 {"name": c.get("name"), "arguments": c.get("arguments", {})}} for c in calls]})
        else:
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": text})
    return _convert_chat(messages, location, state, log, {k: record[k] for k in ("tools",) if k in record},
                         path="conversations")


def _convert_preference(value: dict, location: Location, state: FormatState, log: ProblemLog) -> Conversation | None:
    """`input.messages` is the prompt; each output is a list of assistant messages (OpenAI's shape)."""
    where: dict[str, Any] = {"file": location.file, "line": location.line}
    errors_before = log.error_count
    source = value["input"]
    if not isinstance(source, dict) or "messages" not in source:
        log.error("wrong_type", "'input' must be an object with 'messages'", field="input", **where)
        return None
    _check_unknown_keys(source, INPUT_KEYS, "input.", state, log, **where)
    messages = source["messages"]
    if not isinstance(messages, list) or not messages:
        log.error("no_messages", "'input.messages' must be a non-empty list of messages", field="input.messages", **where)
        return None
    prompt = [_convert_message(m, f"input.messages[{i}]", state, log, **where) for i, m in enumerate(messages)]
    prompt = [replace(t, train=False) for t in prompt]
    tools = check_tools(source["tools"], log, **where) if "tools" in source else ()
    chosen, rejected = (_preference_output(value[key], key, state, log, **where)
                        for key in ("preferred_output", "non_preferred_output"))
    if log.error_count > errors_before or chosen is None or rejected is None or tools is None:
        return None
    if prompt[-1].role == "assistant":
        log.error("prompt_ends_with_assistant", "the last input message must not be the assistant's: the outputs answer it",
                  field=f"input.messages[{len(prompt) - 1}].role", **where)
        return None
    if [t.content for t in chosen] == [t.content for t in rejected]:
        log.error("same_outputs", "preferred_output and non_preferred_output are the same, so nothing is preferred",
                  field="non_preferred_output", **where)
        return None
    return Conversation(tuple(prompt) + chosen, "preference", location, rejected=tuple(prompt) + rejected,
                        tools=tools)


def _preference_output(output: Any, key: str, state: FormatState, log: ProblemLog, **where) -> tuple[Turn, ...] | None:
    if not isinstance(output, list) or not output:
        log.error("wrong_type", f"'{key}' must be a non-empty list of assistant messages, found {type_name(output)}",
                  field=key, **where)
        return None
    turns = []
    for index, message in enumerate(output):
        turn = _convert_message(message, f"{key}[{index}]", state, log, **where)
        if isinstance(message, dict) and message.get("role") not in (None, "assistant"):
            log.error("unknown_role", f"{key} holds assistant messages only, not {message.get('role')!r}",
                      field=f"{key}[{index}].role", **where)
            return None
        turns.append(replace(turn, role="assistant", train=True))
    return tuple(turns)


def _convert_message(message: Any, path: str, state: FormatState, log: ProblemLog, **where) -> Turn:
    if not isinstance(message, dict):
        log.error("wrong_type", f"a message must be an object, found {type_name(message)}", field=path, **where)
        return Turn("user", "")
    role = message.get("role")
    tool_calls: tuple[dict, ...] | None = ()
    if "tool_calls" in message and message["tool_calls"] is not None:
        if role != "assistant":
            log.error("invalid_tool_call", f"only assistant messages make tool calls, not {role!r}",
                      field=f"{path}.tool_calls", **where)
        tool_calls = convert_tool_calls(message["tool_calls"], f"{path}.tool_calls", log, **where)
    calls_only = role == "assistant" and message.get("tool_calls") is not None and not message.get("content")
    for key in ("role", "content"):
        if key not in message and not (key == "content" and calls_only):
            log.error("missing_key", f"message has no {key!r}", field=f"{path}.{key}", **where)
    _check_unknown_keys(message, MESSAGE_KEYS, f"{path}.", state, log, **where)
    if "role" in message and role not in ROLES:
        suggestion = difflib.get_close_matches(str(role).lower(), ROLES, n=1, cutoff=0.6)
        hint = f"did you mean {suggestion[0]!r}? " if suggestion else ""
        log.error("unknown_role", f"unknown role {role!r}", field=f"{path}.role",
                  hint=hint + "role must be one of: " + ", ".join(ROLES), **where)
    tool_call_id = message.get("tool_call_id")
    if tool_call_id is not None and (role != "tool" or not isinstance(tool_call_id, str)):
        log.error("invalid_tool_call", "tool_call_id is a string on tool messages only", field=f"{path}.tool_call_id",
                  **where)
    content = None if calls_only else \
        _check_text(message["content"], f"{path}.content", log, **where) if "content" in message else None
    train = role == "assistant"
    if "weight" in message:
        weight = message["weight"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight not in (0, 1):
            log.error("invalid_weight", f"weight must be 0 or 1, found {weight!r}", field=f"{path}.weight", **where)
        elif role != "assistant":
            log.error("invalid_weight", f"weight is only allowed on assistant messages, not {role!r}",
                      field=f"{path}.weight", **where)
        else:
            train = weight == 1
    return Turn(role if role in ROLES else "user", content or "", train, tool_calls or (),
                tool_call_id if isinstance(tool_call_id, str) else None)


def _check_text(value: Any, path: str, log: ProblemLog, *, allow_blank: bool = False, **where) -> str | None:
    if value is None:
        log.error("null_content", f"{path} is null", field=path, **where)
        return None
    if not isinstance(value, str):
        log.error("wrong_type", f"{path} must be a string, found {type_name(value)}", field=path, **where)
        return None
    if not allow_blank and not value.strip():
        log.error("empty_content", f"{path} is empty", field=path, **where)
        return None
    match = _SURROGATE.search(value)
    if match:
        log.error("invalid_unicode", f"{path} holds a lone surrogate \\u{ord(match.group()):04x}",
                  field=path, **where)
        return None
    return value


def _check_unknown_keys(obj: dict, known: frozenset[str], prefix: str, state: FormatState,
                        log: ProblemLog, **where) -> None:
    """A near-miss of a known key is an error (a typo loses data); other extra keys are ignored."""
    for key in obj:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.75)
        if close and close[0] not in obj:
            log.error("unknown_key", f"unknown key {key!r}", field=f"{prefix}{key}",
                      hint=f"did you mean {close[0]!r}?", **where)
            continue
        seen = state.ignored_keys.setdefault(f"{prefix.split('[')[0]}{'[].' if prefix else ''}{key}",
                                             [where["line"], 0])
        seen[1] += 1


def report_ignored_keys(file: str, state: FormatState, log: ProblemLog) -> None:
    """One warning per ignored key per file, not one per line."""
    for key, (first_line, count) in state.ignored_keys.items():
        log.warning("unknown_key", f"key {key!r} is not part of the format and is ignored ({count} examples)",
                    file=file, line=first_line, field=key, hint="remove it if it was meant to be used")
