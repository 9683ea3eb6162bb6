"""Structured chat requests: `response_format`, `tools` / `tool_choice` and `logprobs` turned into a
grammar, prompt messages and sampling fields; and tool calls parsed back out of the model's text.

Tools reach the model through its chat template (`tunery.data.tools`: the template's own `tools`
argument where it renders them, else a Hermes system message), exactly as tool-calling data is
trained; a `required` or named choice is enforced by the grammar, in the template's call syntax
(`<tool_call>` tags, or Llama 3.1's bare JSON answer with its arguments under "parameters").
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field

from tunery.data.tools import HERMES, TOOL_CLOSE, TOOL_OPEN, ToolSyntax, tool_syntax
from tunery.inference.grammar import GrammarError, compile_schema, json_object_grammar, tool_call_grammar
from tunery.server.errors import ApiError
from tunery.server.protocol import (
    ChatCompletionRequest,
    DeltaMessage,
    DeltaToolCall,
    ResponseFunctionCall,
    ResponseToolCall,
)

TOOL_CALL = re.compile(re.escape(TOOL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CLOSE), re.S)


@dataclass(frozen=True)
class Structure:
    """What a chat request's structure fields ask of the prompt, the sampler and the answer."""

    messages: list[dict]
    grammar: str | None = None
    tools: list[dict] = field(default_factory=list)  # function definitions calls may name
    prompt_tools: list[dict] | None = None  # the tools the chat template is given (none for tool_choice none)
    syntax: ToolSyntax = HERMES  # how the model writes its calls


def plan_structure(req: ChatCompletionRequest, tokenizer) -> Structure:
    messages = [template_message(m) for m in req.messages]
    tools = [t.function.model_dump(exclude_none=True, exclude_unset=True) for t in req.tools or []]  # as sent
    choice = req.tool_choice or ("auto" if tools else "none")
    try:
        if choice != "none" and not tools:
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        if tools and choice != "none":
            if req.response_format is not None and req.response_format.type != "text" and choice != "auto":
                raise ApiError(400, "response_format cannot be combined with a required tool call",
                               param="response_format")
            named = [t for t in tools if not isinstance(choice, str) and t["name"] == choice.function.name]
            if not isinstance(choice, str) and not named:
                raise ApiError(400, f"tool_choice names {choice.function.name!r}, which is not in tools",
                               param="tool_choice")
            for tool in tools:
                if tool.get("strict") and tool.get("parameters"):
                    compile_schema(tool["parameters"], strict=True, name=tool["name"])
            prompt_tools = [{"type": "function", "function": t} for t in tools]
            syntax = tool_syntax(tokenizer)
            if choice == "auto":
                return Structure(messages, response_grammar(req), tools, prompt_tools, syntax)
            # A list's opening tag is a special token the grammar would spell out in text: the list alone
            grammar = tool_call_grammar(named or tools, parallel=req.parallel_tool_calls and not named and syntax.parallel,
                                        open_tag="" if syntax.as_list else syntax.open, close_tag=syntax.close,
                                        arguments_key=syntax.arguments_key, as_list=syntax.as_list)
            return Structure(messages, grammar, tools, prompt_tools, syntax)
        return Structure(messages, response_grammar(req))
    except GrammarError as exc:
        raise ApiError(400, exc.message, param="tools" if tools else "response_format", code=exc.code) from None


def response_grammar(req: ChatCompletionRequest) -> str | None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return json_object_grammar()
    spec = fmt.json_schema
    assert spec is not None  # the request model refuses type json_schema without one
    return compile_schema(spec.schema_ or {"type": "object"}, strict=bool(spec.strict), name=spec.name)


def template_message(message) -> dict:
    """A request message as a chat template takes it: call arguments as objects (`tunery.data.tools`)."""
    rendered: dict = {"role": message.template_role, "content": message.text()}
    calls = []
    for call in message.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except ValueError:
            raise ApiError(400, f"the arguments of tool call {call.id!r} are not JSON", param="messages") from None
        calls.append({"id": call.id, "type": "function", "function": {"name": call.function.name,
                                                                      "arguments": arguments}})
    if calls:
        rendered["tool_calls"] = calls
    if message.role == "tool" and message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    return rendered


# A call's JSON as templates write it, up to its arguments object: what streaming needs to start a call.
CALL_HEAD = {key: re.compile(r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]{1,64})"\s*,\s*"' + key + r'"\s*:\s*(?=\{)')
             for key in ("arguments", "parameters")}
PYTHON_TAG = "<|python_tag|>"  # Llama 3.1 may open a call with it


def parse_tool_calls(text: str, tools: list[dict], syntax: ToolSyntax = HERMES
                     ) -> tuple[str | None, list[ResponseToolCall]]:
    """(content left over, tool calls) from the model's text; malformed calls stay as content.

    A call's `arguments` are the model's own JSON text, as OpenAI returns them (and as they stream)."""
    if not syntax.open:  # the whole answer is one call, or no call at all
        call = _read_call(text.strip().removeprefix(PYTHON_TAG), tools, syntax.arguments_key)
        return (None, [call]) if call is not None else (text, [])
    if syntax.as_list:  # the whole answer is a list of calls (its special-token tag decoded away or not)
        calls = _read_call_list(text.strip().removeprefix(syntax.open).strip(), tools, syntax.arguments_key)
        return (None, calls) if calls else (text, [])
    calls, kept = [], text
    for match in TOOL_CALL.finditer(text):
        call = _read_call(match.group(1), tools, syntax.arguments_key)
        if call is not None:
            calls.append(call)
            kept = kept.replace(match.group(0), "", 1)
    return (kept.strip() or None) if calls else text, calls


def _read_call_list(text: str, tools: list[dict], arguments_key: str) -> list[ResponseToolCall]:
    """Every call of a JSON list of calls, or none when any of them is not a call to a listed function."""
    try:
        items = json.loads(text)
    except ValueError:
        return []
    if not isinstance(items, list) or not items:
        return []
    calls = [_read_call(json.dumps(item), tools, arguments_key) for item in items]
    return [] if None in calls else [c for c in calls if c is not None]


def _read_call(call_json: str, tools: list[dict], arguments_key: str) -> ResponseToolCall | None:
    try:
        call = json.loads(call_json)
    except ValueError:
        return None
    if not isinstance(call, dict) or call.get("name") not in {t["name"] for t in tools}:
        return None
    arguments = call.get(arguments_key, {})
    return ResponseToolCall(id="call_" + secrets.token_hex(12), function=ResponseFunctionCall(
        name=call["name"], arguments=raw_arguments(call_json, arguments, arguments_key)))


def raw_arguments(call_json: str, arguments, arguments_key: str = "arguments") -> str:
    """The arguments object as the model wrote it, when the call starts with its name; else re-serialised."""
    head = CALL_HEAD[arguments_key].match(call_json)
    if head is not None:
        try:
            _, end = json.JSONDecoder().raw_decode(call_json, head.end())
            return call_json[head.end():end]
        except ValueError:
            pass
    return json.dumps(arguments) if not isinstance(arguments, str) else arguments


class ToolCallStream:
    """One streamed choice of a request with tools, as OpenAI streams it: content passes through as it
    arrives (holding back what may be the start of a call tag); a call goes out as a piece with its id and
    name once its name is in, then its arguments in pieces as they are generated (holding back only what
    may be the call's closing brace and tag). A call written another way (keys in another order, arguments
    as a string) goes out whole once its close tag is in; malformed calls and calls to unknown functions
    stay content, as in `parse_tool_calls`. Where the whole answer is the call (Llama 3.1), an answer that
    opens with "{" is held until it is known to be a call (then streamed as one) or not (then content)."""

    def __init__(self, tools: list[dict], syntax: ToolSyntax = HERMES):
        self.tools, self.syntax = tools, syntax
        self.names = {t["name"] for t in tools}
        self.head = CALL_HEAD[syntax.arguments_key]
        self.calls = 0
        self.open_call = False  # inside a call whose arguments are streaming
        self._pending = ""  # outside a call: text not yet sent; inside: the arguments text so far
        self._sent = 0  # inside a call: how much of the arguments text has gone out
        self._space = ""  # whitespace held back: between calls it is not content
        self._content_only = False  # a whole-answer call syntax whose answer turned out to be text

    def feed(self, text: str) -> list[DeltaMessage]:
        self._pending += text
        if not self.syntax.open or self.syntax.as_list:
            return self._feed_whole_answer()
        out: list[DeltaMessage] = []
        while True:
            if self.open_call:
                if not self._stream_arguments(out):
                    return out
                continue
            start = self._pending.find(TOOL_OPEN)
            if start < 0:
                held = next((n for n in range(len(TOOL_OPEN) - 1, 0, -1) if self._pending.endswith(TOOL_OPEN[:n])), 0)
                out += self._content(self._pending[:len(self._pending) - held])
                self._pending = self._pending[len(self._pending) - held:]
                return out
            out += self._content(self._pending[:start])
            self._pending = self._pending[start:]
            head = self.head.match(self._pending, len(TOOL_OPEN))
            if head is not None and head.group(1) in self.names:
                out.append(self._call_piece(head.group(1)))
                self._pending, self._sent, self.open_call, self._space = self._pending[head.end():], 0, True, ""
                continue
            end = self._pending.find(TOOL_CLOSE)
            if end < 0:
                return out
            block, self._pending = self._pending[:end + len(TOOL_CLOSE)], self._pending[end + len(TOOL_CLOSE):]
            _, calls = parse_tool_calls(block, self.tools)
            if not calls:
                out += self._content(block)
                continue
            self._space = ""
            out.append(self._call_piece(calls[0].function.name))
            out.append(self._arguments_piece(calls[0].function.arguments))
            self.calls += 1

    def _feed_whole_answer(self) -> list[DeltaMessage]:
        """The answer is one call or none: content unless it opens with "{" and names a listed function."""
        out: list[DeltaMessage] = []
        if self.open_call:
            self._stream_arguments(out)
            return out
        if self._content_only:
            out += self._content(self._pending)
            self._pending = ""
            return out
        tag = self.syntax.open or PYTHON_TAG
        stripped = self._pending.lstrip().removeprefix(tag).lstrip()
        if not stripped or tag.startswith(stripped):
            return out  # nothing to decide on yet
        if not stripped.startswith("[" if self.syntax.as_list else "{"):
            self._content_only = True
            return self._feed_whole_answer()
        head = None if self.syntax.as_list else self.head.match(stripped)  # a list goes out whole at the end
        if head is not None and head.group(1) in self.names:
            out.append(self._call_piece(head.group(1)))
            self._pending, self._sent, self.open_call = stripped[head.end():], 0, True
            self._stream_arguments(out)
        return out  # held: perhaps a call whose name is not in yet, perhaps JSON content

    def _stream_arguments(self, out: list[DeltaMessage]) -> bool:
        """Send the arguments text that cannot be the call's end; True once the call's close tag is in."""
        end = self._pending.find(TOOL_CLOSE) if self.syntax.open else -1
        if end >= 0:
            arguments, self._pending = self._pending[:end], self._pending[end + len(TOOL_CLOSE):]
            arguments = arguments.rstrip()
            arguments = arguments[:-1].rstrip() if arguments.endswith("}") else arguments  # the call's own brace
        else:
            held = next((n for n in range(len(TOOL_CLOSE) - 1, 0, -1) if self._pending.endswith(TOOL_CLOSE[:n])),
                        0) if self.syntax.open else 0
            arguments = self._pending[:len(self._pending) - held].rstrip()
            arguments = arguments[:-1].rstrip() if arguments.endswith("}") else arguments
        if len(arguments) > self._sent:
            out.append(self._arguments_piece(arguments[self._sent:]))
            self._sent = len(arguments)
        if end < 0:
            return False
        self.open_call, self._sent = False, 0
        self.calls += 1
        return True

    def _call_piece(self, name: str) -> DeltaMessage:
        return DeltaMessage(tool_calls=[DeltaToolCall(index=self.calls, id="call_" + secrets.token_hex(12),
                                                      type="function", function={"name": name, "arguments": ""})])

    def _arguments_piece(self, text: str) -> DeltaMessage:
        return DeltaMessage(tool_calls=[DeltaToolCall(index=self.calls, function={"arguments": text})])

    def finish(self) -> list[DeltaMessage]:
        """What is still held back: a call's last arguments text, a held answer as a call or as content;
        trailing whitespace after calls is dropped."""
        if self.open_call:  # a whole-answer call ends with the answer; a tagged one was cut off (max_tokens)
            rest = self._pending.rstrip()
            if not self.syntax.open and rest.endswith("}"):
                rest = rest[:-1].rstrip()  # the call's own closing brace
            rest, self._pending, self.open_call = rest[self._sent:], "", False
            self.calls += 1
            return [self._arguments_piece(rest)] if rest else []
        if (not self.syntax.open or self.syntax.as_list) and self._pending.strip() and not self._content_only:
            content, calls = parse_tool_calls(self._pending, self.tools, self.syntax)
            self._pending = ""
            out = []
            for call in calls:  # a list, or a call written another way than the head streaming reads
                out += [self._call_piece(call.function.name), self._arguments_piece(call.function.arguments)]
                self.calls += 1
            return out or self._content(content or "")
        out = self._content(self._pending)
        self._pending = ""
        if self._space and not self.calls:
            out.append(DeltaMessage(content=self._space))
        return out

    def _content(self, text: str) -> list[DeltaMessage]:
        if not text:
            return []
        if not text.strip():
            self._space += text
            return []
        text, self._space = self._space + text, ""
        return [DeltaMessage(content=text)]


def completion_logprobs(entries: list[dict], start_offset: int = 0) -> dict:
    """The legacy completions `logprobs` object from chat-style entries."""
    offsets, position = [], start_offset
    for entry in entries:
        offsets.append(position)
        position += len(entry["token"])
    return {"tokens": [e["token"] for e in entries], "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
            "text_offset": offsets}
