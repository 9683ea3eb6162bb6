"""A small reader of Go's text/template, the language of Ollama's TEMPLATE: enough of it to render the
templates tunery writes into a Modelfile (text, `{{- -}}` trimming, fields and variables, if / else if /
else, range with its variables, and the functions eq, ne, lt, le, gt, ge, and, or, not, len, index, json).

It exists to check, at export time and in tests, that a Modelfile renders a conversation exactly as the
model's own chat template does. It knows templates and plain values, nothing of Ollama or models.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tunery.errors import ExportError

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<raw>`[^`]*`)|(?P<num>-?\d+)|(?P<open>\()|(?P<close>\)(?:\.[A-Za-z_]\w*)*)'
                    r"|(?P<word>[$.A-Za-z_][$.A-Za-z0-9_]*)|(?P<assign>:=)|(?P<comma>,))")


@dataclass
class _Node:
    kind: str  # text | print | if | range
    text: str = ""
    pipe: list = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # range variables ($i, $m or $m)


def render_go_template(template: str, data: dict) -> str:
    """`template` executed on `data` (maps keyed as the template names fields), as Go would print it."""
    nodes, rest = _parse(_lex(template), 0, top=True)
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)


def _lex(template: str) -> list[tuple[str, str]]:
    """[("text", ...), ("action", ...)] with `{{-` / `-}}` whitespace trimming applied."""
    items: list[tuple[str, str]] = []
    position, trim_next = 0, False
    for match in _ACTION.finditer(template):
        text = template[position:match.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if match.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            items.append(("action", body))
        trim_next, position = bool(match.group(3)), match.end()
    tail = template[position:]
    items.append(("text", tail.lstrip(" \t\r\n") if trim_next else tail))
    return [item for item in items if item != ("text", "")]


def _parse(items: list[tuple[str, str]], at: int, top: bool = False) -> tuple[list[_Node], int]:
    """Nodes up to the `end` / `else` that closes this block (returned index points at it)."""
    nodes: list[_Node] = []
    while at < len(items):
        kind, text = items[at]
        if kind == "text":
            nodes.append(_Node("text", text=text))
            at += 1
            continue
        word = text.split(None, 1)[0] if text else ""
        if word in ("end", "else"):
            if top:
                raise ExportError(f"unexpected {{{{ {text} }}}} in a Go template", code="invalid_template")
            return nodes, at
        if word in ("if", "range"):
            node = _Node(word)
            header = text[len(word):].strip()
            if word == "range":
                assigned = re.match(r"(\$\w*)\s*(?:,\s*(\$\w*)\s*)?:=\s*(.*)", header, re.S)
                if assigned:
                    node.names = [n for n in assigned.group(1, 2) if n]
                    header = assigned.group(3)
            node.pipe = _tokens(header)
            node.body, at = _parse(items, at + 1)
            current = node
            while items[at][1].split(None, 1)[0] == "else":
                rest = items[at][1][4:].strip()
                if rest.startswith("if "):  # else if: a nested if in the else branch, closed by the same end
                    nested = _Node("if", pipe=_tokens(rest[3:]))
                    nested.body, at = _parse(items, at + 1)
                    current.orelse = [nested]
                    current = nested
                else:
                    current.orelse, at = _parse(items, at + 1)
            nodes.append(node)
            at += 1  # the end
            continue
        nodes.append(_Node("print", pipe=_tokens(text)))
        at += 1
    if not top:
        raise ExportError("a Go template block has no {{ end }}", code="invalid_template")
    return nodes, at


def _tokens(text: str) -> list:
    """A pipeline's command as nested lists: words, literals, and parenthesised sub-commands."""
    stack: list[list] = [[]]
    position = 0
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ExportError(f"cannot read {text!r} in a Go template", code="invalid_template")
        position = match.end()
        if match.group("open"):
            stack.append([])
        elif match.group("close"):  # `(index .Messages 0).Role`: fields of a parenthesised value
            inner, path = stack.pop(), match.group("close")[1:]
            stack[-1].append(("fields", inner, path) if path else inner)
        elif match.group("str"):
            stack[-1].append(("lit", json.loads(match.group("str"))))
        elif match.group("raw"):
            stack[-1].append(("lit", match.group("raw")[1:-1]))
        elif match.group("num"):
            stack[-1].append(("lit", int(match.group("num"))))
        elif match.group("word"):
            stack[-1].append(match.group("word"))
        else:
            raise ExportError(f"this reader does not take {match.group(0).strip()!r} in {text!r}",
                              code="invalid_template")
    return stack[0]


def _run(nodes: list[_Node], dot: Any, scope: dict, out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "print":
            out.append(_show(_call(node.pipe, dot, scope)))
        elif node.kind == "if":
            _run(node.body if _truth(_call(node.pipe, dot, scope)) else node.orelse, dot, scope, out)
        else:
            items = _call(node.pipe, dot, scope) or []
            pairs = list(items.items()) if isinstance(items, dict) else list(enumerate(items))
            for key, item in pairs:
                inner = dict(scope)
                if len(node.names) == 2:
                    inner[node.names[0]], inner[node.names[1]] = key, item
                elif node.names:
                    inner[node.names[0]] = item
                _run(node.body, item, inner, out)
            if not pairs:
                _run(node.orelse, dot, scope, out)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "not": lambda a: not _truth(a), "len": lambda a: len(a), "index": lambda a, *keys: _index(a, keys),
    "json": lambda a: _go_json(a),  # Ollama's one function of its own
}


def _go_json(value: Any) -> str:
    """json.Marshal's text: compact, map keys sorted, HTML characters escaped."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


def _call(command: list, dot: Any, scope: dict) -> Any:
    if not command:
        raise ExportError("an empty Go template action", code="invalid_template")
    head = command[0]
    if head in ("and", "or"):  # short-circuit, returning the deciding value as Go does
        value = None
        for arg in command[1:]:
            value = _value(arg, dot, scope)
            if _truth(value) != (head == "and"):
                return value
        return value
    if isinstance(head, str) and head in FUNCTIONS:
        return FUNCTIONS[head](*(_value(arg, dot, scope) for arg in command[1:]))
    if len(command) != 1:
        raise ExportError(f"this reader does not take the command {command!r}", code="invalid_template")
    return _value(head, dot, scope)


def _value(arg, dot: Any, scope: dict) -> Any:
    if isinstance(arg, list):
        return _call(arg, dot, scope)
    if isinstance(arg, tuple):
        return _fields(_call(arg[1], dot, scope), arg[2]) if arg[0] == "fields" else arg[1]
    if arg in ("true", "false"):
        return arg == "true"
    if arg == ".":
        return dot
    if arg.startswith("$"):
        name, _, path = arg.partition(".")
        if name not in scope:
            raise ExportError(f"undefined variable {name} in a Go template", code="invalid_template")
        return _fields(scope[name], path)
    if arg.startswith("."):
        return _fields(dot, arg[1:])
    raise ExportError(f"this reader does not know the function {arg!r}", code="invalid_template")


def _fields(value: Any, path: str) -> Any:
    for name in filter(None, path.split(".")):
        value = value.get(name) if isinstance(value, dict) else None
    return value


def _index(value: Any, keys) -> Any:
    for key in keys:
        value = value[key] if isinstance(value, list) else value.get(key)
    return value


def _truth(value: Any) -> bool:
    return value not in (None, False, 0, "") and not (isinstance(value, (list, dict)) and not value)


def _show(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
