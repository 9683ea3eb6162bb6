"""Grammars for constrained decoding, built with llguidance: a JSON schema, any JSON object, or a tool call.

A grammar is plain text (llguidance's JSON grammar format) that travels in `SamplingParams`; the
per-row mask that enforces it lives in `logits.py`. Schemas are checked here, before a request
is queued: OpenAI's `strict` rules, then llguidance's own compile, so a bad schema is a clear 400.
No torch here.
"""

from __future__ import annotations

import json
from typing import Any

from tunery.errors import ConfigError

# Compact JSON, as OpenAI's structured outputs write it: no free whitespace for the model to loop in.
JSON_OPTIONS: Any = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
# Keywords OpenAI's strict mode accepts (https://platform.openai.com/docs/guides/structured-outputs).
STRICT_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
                   "$ref", "$defs", "definitions", "description", "title", "pattern", "format", "minimum",
                   "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
                   "default", "nullable"}


class GrammarError(ConfigError):
    """A schema or tool definition that cannot be enforced; the server answers 400."""


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's `json_object` mode)."""
    return compile_schema({"type": "object"}, strict=False, name="json_object")


def compile_schema(schema: dict, *, strict: bool, name: str = "schema") -> str:
    """The llguidance grammar enforcing `schema`; GrammarError names what is unsupported."""
    import llguidance

    if not isinstance(schema, dict):
        raise GrammarError(f"the JSON schema {name!r} must be an object", code="invalid_schema")
    if strict:
        check_strict_schema(schema, name)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_OPTIONS)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(f"the JSON schema {name!r} cannot be enforced: {messages[0][:300]}",
                           code="invalid_schema", hint="remove the unsupported keyword or feature")
    return grammar


def check_strict_schema(schema: dict, name: str, path: str = "") -> None:
    """OpenAI's strict rules: a root object, every object closed and every property required."""
    if not path and schema.get("type") != "object":
        raise GrammarError(f"invalid schema {name!r}: the root must be an object with \"type\": \"object\"",
                           code="invalid_schema")
    for key, value in schema.items():
        where = f"{path}/{key}" if path else key
        if key not in STRICT_KEYWORDS:
            raise GrammarError(f"invalid schema {name!r}: '{key}' at {where} is not supported in strict mode",
                               code="invalid_schema")
        if key in ("properties", "$defs", "definitions"):
            for prop, sub in (value or {}).items():
                if isinstance(sub, dict):
                    check_strict_schema(sub, name, f"{where}/{prop}")
        elif key == "items" and isinstance(value, dict):
            check_strict_schema(value, name, where)
        elif key == "anyOf":
            for i, sub in enumerate(value or []):
                check_strict_schema(sub, name, f"{where}/{i}")
    types = schema.get("type")
    if types == "object" or (isinstance(types, list) and "object" in types):
        if schema.get("additionalProperties") is not False:
            raise GrammarError(f"invalid schema {name!r}: 'additionalProperties' is required to be supplied "
                               f"and to be false (at {path or 'the root'})", code="invalid_schema")
        missing = sorted(set(schema.get("properties") or {}) - set(schema.get("required") or []))
        if missing:
            raise GrammarError(f"invalid schema {name!r}: 'required' must list every property "
                               f"(missing {', '.join(missing)} at {path or 'the root'})", code="invalid_schema")


def tool_call_schema(tools: list[dict], *, parallel: bool, arguments_key: str = "arguments") -> dict:
    """A schema for the tool-call JSON the model writes: one call (or a list when parallel) to a listed tool,
    its arguments under `arguments_key` ("parameters" in Llama 3.1's calls)."""
    calls = [{"type": "object", "properties": {"name": {"const": t["name"]}, arguments_key: t.get("parameters")
                                               or {"type": "object"}},
              "required": ["name", arguments_key], "additionalProperties": False} for t in tools]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"type": "array", "items": one, "minItems": 1} if parallel else one


def tool_call_grammar(tools: list[dict], *, parallel: bool, open_tag: str, close_tag: str,
                      arguments_key: str = "arguments", as_list: bool = False) -> str:
    """Tool calls as the model's chat template writes them: `open_tag` JSON `close_tag`, enforced; with
    `as_list`, one JSON list of calls (one call unless `parallel`)."""
    import llguidance

    schema = tool_call_schema(tools, parallel=as_list, arguments_key=arguments_key)
    if as_list and not parallel:
        schema["maxItems"] = 1
    parallel = parallel and not as_list
    body = json.dumps(schema)
    parts = [json.dumps(tag) if tag else "" for tag in (open_tag, close_tag)]  # Llama 3.1's calls have no tags
    lark = (f"start: call{'+' if parallel else ''}\n"
            f"call: {' '.join(filter(None, [parts[0], 'json_call', parts[1]]))}\n"
            f"json_call: %json {body}\n")
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise GrammarError(f"the tool definitions cannot be enforced: {messages[0][:300]}", code="invalid_tools")
    return grammar
