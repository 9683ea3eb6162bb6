"""Structured outputs and tools through the official `openai` client (and LangChain) over real HTTP:
JSON schemas always validate, tool calls round-trip, logprobs, penalties, logit_bias, one model by id."""

from __future__ import annotations

import json
from contextlib import contextmanager

import jsonschema
import openai
import pytest

from tests.chat_templates import LLAMA31_TOOLS

TICKET = {"type": "object",
          "properties": {"category": {"type": "string", "enum": ["network", "hardware", "access", "email"]},
                         "priority": {"type": "string", "enum": ["P1", "P2", "P3", "P4"]},
                         "summary": {"type": "string", "pattern": "^[A-Za-z ]{1,20}$"},
                         "tags": {"type": "array", "items": {"type": "string", "enum": ["vpn", "printer", "mail"]},
                                  "maxItems": 2}},
          "required": ["category", "priority", "summary", "tags"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{1,12}$"},
                                                    "unit": {"type": "string", "enum": ["c", "f"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ASK = [{"role": "user", "content": "Printer on floor 3 is offline, please triage."}]


@contextmanager
def chat_template(tokenizer, template: str):
    """The tokenizer renders with TEMPLATE inside the block, and with its own again after it."""
    plain = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        yield
    finally:
        tokenizer.chat_template = plain


def schema_format(strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "ticket", "schema": TICKET, "strict": strict}}


def test_fifty_json_schema_answers_all_validate(live):
    client = live.client()
    answers = []
    for seed in range(50):
        result = client.chat.completions.create(model=live.base, messages=ASK, response_format=schema_format(),
                                                temperature=1.0, seed=seed, max_tokens=400)
        assert result.choices[0].finish_reason == "stop", result.choices[0].message.content
        answers.append(json.loads(result.choices[0].message.content))
    for answer in answers:
        jsonschema.validate(answer, TICKET)
    assert len({json.dumps(a, sort_keys=True) for a in answers}) > 5  # sampled, not one fixed answer


def test_json_object_mode_on_the_adapter_streams_an_object(live):
    client = live.client()
    finished = 0
    for seed in range(4):
        stream = client.chat.completions.create(model="support", messages=ASK, response_format={"type": "json_object"},
                                                temperature=0.8, seed=seed, max_tokens=300, stream=True)
        text, reason = "", None
        for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reason = chunk.choices[0].finish_reason or reason
        assert text.startswith("{")
        if reason == "stop":  # a random tiny model may also run out of tokens inside a string
            assert isinstance(json.loads(text), dict)
            finished += 1
    assert finished


@pytest.mark.parametrize("schema, words", [
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}, "required"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, "additionalProperties"),
    ({"type": "object", "properties": {"a": {"type": "string", "if": {}}}, "required": ["a"],
      "additionalProperties": False}, "'if'"),
])
def test_unsupported_strict_schemas_are_a_clear_400(live, schema, words):
    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(
            model=live.base, messages=ASK, max_tokens=8,
            response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": True}})
    assert words in caught.value.body["message"] and caught.value.body["param"] == "response_format"


def test_named_tool_call_round_trip(live):
    client = live.client()
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = client.chat.completions.create(model=live.base, messages=messages, tools=[WEATHER], max_tokens=200,
                                           tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                           temperature=0.7, seed=1)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18})}]
    second = client.chat.completions.create(model=live.base, messages=messages, tools=[WEATHER], tool_choice="none",
                                            max_tokens=12, temperature=0)
    assert second.choices[0].message.tool_calls is None and second.choices[0].message.content


def test_required_parallel_tool_calls_stream_in_openai_chunks(live):
    """Each call streams as OpenAI's do: a first piece with id, type and name (arguments ""), then argument
    pieces carrying only the index and text; the official client's stream helper assembles them."""
    client = live.client()
    with client.chat.completions.stream(model=live.base, messages=[{"role": "user", "content": "Weather?"}],
                                        tools=[WEATHER], tool_choice="required", max_tokens=120, temperature=0.7,
                                        seed=2) as stream:
        pieces, done = [], []
        for event in stream:
            if event.type == "chunk" and event.chunk.choices:
                pieces += [c.model_dump(exclude_unset=True) for c in event.chunk.choices[0].delta.tool_calls or []]
            elif event.type == "tool_calls.function.arguments.done":
                done.append((event.name, json.loads(event.arguments)))
        final = stream.get_final_completion()
    assert pieces and pieces[0]["function"] == {"name": "get_weather", "arguments": ""} and pieces[0]["id"]
    heads = [p for p in pieces if "id" in p]
    assert all(set(p) == {"index", "function"} and set(p["function"]) == {"arguments"} for p in pieces if "id" not in p)
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == len(done) == len(heads)
    for call, (name, arguments) in zip(choice.message.tool_calls, done):
        assert call.function.name == name == "get_weather" and call.type == "function"
        assert json.loads(call.function.arguments) == arguments
        jsonschema.validate(arguments, WEATHER["function"]["parameters"])


def test_tool_stream_passes_content_through_and_holds_back_a_tag():
    from tunery.server.structured import ToolCallStream

    stream = ToolCallStream([WEATHER["function"]])
    pieces = [stream.feed(t) for t in ["Let me", " check. <tool", '_call>{"name": "get_weather", ',
                                       '"arguments": {"city": "Oslo"}}</tool_call>\n', "<tool_call>{bad}</tool_call>"]]
    pieces.append(stream.finish())
    shown = [[d.model_dump(exclude_none=True) for d in step] for step in pieces]
    assert shown[0] == [{"content": "Let me"}] and shown[1] == [{"content": " check. "}] and shown[2] == []
    call = shown[3]
    assert call[0]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert call[1]["tool_calls"][0] == {"index": 0, "function": {"arguments": '{"city": "Oslo"}'}}
    assert shown[4] == [{"content": "\n<tool_call>{bad}</tool_call>"}] and stream.calls == 1


def _arguments(deltas) -> list[str]:
    return [c.function["arguments"] for d in deltas for c in d.tool_calls or [] if c.function.get("arguments")]


def test_tool_call_arguments_stream_token_by_token():
    """Once a call's name is in, its arguments go out as they are generated: every token that cannot be the
    call's closing brace or tag is sent at once, and the pieces join to exactly the non-streamed arguments."""
    from tunery.server.structured import ToolCallStream, parse_tool_calls

    text = ('Sure.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}\n</tool_call>'
            '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome", "unit": "f"}}</tool_call>')
    tokens = [text[i:i + 3] for i in range(0, len(text), 3)]
    stream = ToolCallStream([WEATHER["function"]])
    steps = [stream.feed(t) for t in tokens] + [stream.finish()]
    deltas = [d for step in steps for d in step]
    heads = [c for d in deltas for c in d.tool_calls or [] if c.id]
    assert [(c.index, c.function["name"]) for c in heads] == [(0, "get_weather"), (1, "get_weather")]
    per_call = {i: "".join(c.function.get("arguments", "") for d in deltas for c in d.tool_calls or [] if c.index == i)
                for i in (0, 1)}
    _, calls = parse_tool_calls(text, [WEATHER["function"]])
    assert [per_call[0], per_call[1]] == [c.function.arguments for c in calls]
    assert per_call[0] == '{"city": "Oslo", "unit": "c"}'
    assert len(_arguments(deltas)) > 10  # many pieces, not one per call
    sent_before_close = "".join(_arguments([d for step in steps[:text.index("</tool_call>") // 3] for d in step]))
    assert sent_before_close == per_call[0]  # whole before its close tag: the call's own brace was held back
    assert "".join(d.content for d in deltas if d.content) == "Sure." and stream.calls == 2


def test_a_call_cut_off_by_max_tokens_keeps_what_was_generated():
    from tunery.server.structured import ToolCallStream

    stream = ToolCallStream([WEATHER["function"]])
    deltas = stream.feed('<tool_call>{"name": "get_weather", "arguments": {"city": "Os') + stream.finish()
    assert "".join(_arguments(deltas)) == '{"city": "Os' and stream.calls == 1
    other = ToolCallStream([WEATHER["function"]])  # arguments as a JSON string: sent whole at the close tag
    deltas = [d for t in ['<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}',
                          "</tool_call>"] for d in other.feed(t)]
    assert _arguments(deltas) == ['{"city": "Oslo"}'] and other.calls == 1


def test_streamed_arguments_arrive_in_pieces_through_the_client(live):
    client = live.client()
    with client.chat.completions.stream(model=live.base, messages=[{"role": "user", "content": "Weather?"}],
                                        tools=[WEATHER], tool_choice="required", max_tokens=120, temperature=0.7,
                                        seed=3, parallel_tool_calls=False) as stream:
        pieces = [e.arguments_delta for e in stream if e.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls" and "".join(pieces) == call.function.arguments
    assert len(pieces) > 3
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])


def test_logprobs_penalties_and_logit_bias(live):
    client = live.client()
    x_id = live.state.tokenizer.convert_tokens_to_ids("x")
    result = client.chat.completions.create(model=live.base, messages=ASK, max_tokens=4, temperature=0,
                                            logprobs=True, top_logprobs=2, logit_bias={str(x_id): 100},
                                            presence_penalty=0.5, frequency_penalty=0.5)
    content = result.choices[0].logprobs.content
    assert result.choices[0].message.content == "xxxx" and len(content) == 4
    assert content[0].token == "x" and len(content[0].top_logprobs) == 2 and content[0].logprob <= 0
    text = client.completions.create(model=live.base, prompt="The printer", max_tokens=3, temperature=0, logprobs=2)
    assert len(text.choices[0].logprobs.tokens) == 3 and len(text.choices[0].logprobs.top_logprobs[0]) == 2
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=live.base, messages=ASK, max_tokens=2, logit_bias={"x": 5})


def test_one_model_by_id(live):
    client = live.client()
    assert client.models.retrieve("support").parent == live.base
    assert client.models.retrieve(live.base).id == live.base
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_with_structured_output(live, method):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Ticket(BaseModel):
        """A triaged helpdesk ticket."""

        category: str = Field(description="network, hardware or access", pattern="^(network|hardware|access)$")
        urgent: bool

    llm = ChatOpenAI(model=live.base, base_url=live.url + "/v1", api_key=live.user_key, temperature=0.5, seed=1,
                     max_tokens=80, max_retries=0)
    if method == "json_mode":  # any JSON object: a random tiny model may run out of tokens inside a string
        finished = 0
        for seed in range(4):
            structured = llm.model_copy(update={"seed": seed, "max_tokens": 300}).with_structured_output(
                Ticket.model_json_schema(), method="json_mode", include_raw=True)
            try:
                result = structured.invoke("Triage as JSON with keys category and urgent: the VPN is down.")
            except openai.LengthFinishReasonError:  # the client's own signal that max_tokens cut the answer
                continue
            assert result["raw"].response_metadata["finish_reason"] == "stop"
            assert isinstance(result["parsed"], dict) and result["parsing_error"] is None
            finished += 1
        assert finished
        return
    answer = llm.with_structured_output(Ticket, method=method, strict=True).invoke("The VPN is down for everyone.")
    assert isinstance(answer, Ticket) and answer.category in ("network", "hardware", "access")


def test_tools_reach_a_template_that_renders_them(live):
    """A template with its own tool handling gets `tools` and the history's calls and results as they are."""
    from tests.data.test_tool_data import QWEN_STYLE
    from tunery.data.template import encode_prompt

    tokenizer = live.state.tokenizer
    with chat_template(tokenizer, QWEN_STYLE):
        client = live.client()
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = client.chat.completions.create(model=live.base, messages=messages, tools=[WEATHER], max_tokens=200,
                                               tool_choice="required", temperature=0.7, seed=1)
        call = first.choices[0].message.tool_calls[0]
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        messages += [first.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "{\"temperature\": 18}"}]
        second = client.chat.completions.create(model=live.base, messages=messages, tools=[WEATHER], max_tokens=1,
                                                temperature=0)
        for message in messages:
            for each in message.get("tool_calls", []):
                each["function"]["arguments"] = json.loads(each["function"]["arguments"])
        expected = tokenizer.apply_chat_template(messages, tools=[WEATHER], tokenize=False, add_generation_prompt=True)
        assert "<tool_call>\n{\"name\": \"get_weather\"" in expected and "<tool_response>" in expected
        prompt_ids = encode_prompt(tokenizer, messages, tools=[WEATHER])  # contents tokenized apart, as in training
        assert tokenizer.decode(prompt_ids) == expected and second.usage.prompt_tokens == len(prompt_ids)


def test_llama31_calls_are_read_as_the_template_writes_them():
    """Llama 3.1's template renders tools itself and writes a call as the whole answer,
    {"name": ..., "parameters": {...}}: that is read back (streamed too), and any other answer is content."""
    from tunery.data.tools import LLAMA_JSON
    from tunery.server.structured import ToolCallStream, parse_tool_calls

    tools = [WEATHER["function"]]
    answer = '{"name": "get_weather", "parameters": {"city": "Oslo", "unit": "c"}}'
    for text in (answer, "<|python_tag|>" + answer, " " + answer + "\n"):
        content, calls = parse_tool_calls(text, tools, LLAMA_JSON)
        assert content is None and [(c.function.name, c.function.arguments) for c in calls] == \
            [("get_weather", '{"city": "Oslo", "unit": "c"}')]
    for text in ('{"name": "nope", "parameters": {}}', "It is sunny.", '{"city": "Oslo"}'):
        assert parse_tool_calls(text, tools, LLAMA_JSON) == (text, [])
    stream = ToolCallStream(tools, LLAMA_JSON)
    deltas = [d for i in range(0, len(answer), 3) for d in stream.feed(answer[i:i + 3])] + stream.finish()
    assert deltas[0].tool_calls[0].function == {"name": "get_weather", "arguments": ""}
    assert "".join(_arguments(deltas)) == '{"city": "Oslo", "unit": "c"}' and len(_arguments(deltas)) > 5
    assert stream.calls == 1 and not any(d.content for d in deltas)
    for text in ("It is sunny in Oslo.", '{"city": "Oslo"} is what I know.'):
        stream = ToolCallStream(tools, LLAMA_JSON)
        deltas = [d for i in range(0, len(text), 4) for d in stream.feed(text[i:i + 4])] + stream.finish()
        assert "".join(d.content or "" for d in deltas) == text and stream.calls == 0


def test_a_llama31_template_gets_tools_natively_and_its_calls_round_trip(live):
    """The tools go into Llama 3.1's own prompt (its first user message), a required call is enforced in its
    JSON form and parsed (whole and streamed), and the result goes back as its ipython turn."""
    from tunery.data.template import encode_prompt
    from tunery.data.tools import LLAMA_JSON, native_tool_syntax

    tokenizer = live.state.tokenizer
    with chat_template(tokenizer, LLAMA31_TOOLS):
        assert native_tool_syntax(tokenizer) == LLAMA_JSON
        client = live.client()
        unit = {"type": "function", "function": {"name": "unit", "parameters": {  # short: the tiny model's context
            "type": "object", "properties": {"u": {"type": "string", "enum": ["c", "f"]}}, "required": ["u"],
            "additionalProperties": False}}}
        messages = [{"role": "user", "content": "Unit?"}]
        first = client.chat.completions.create(model=live.base, messages=messages, tools=[unit], max_tokens=60,
                                               tool_choice="required", temperature=0.7, seed=1)
        assert first.choices[0].finish_reason == "tool_calls" and len(first.choices[0].message.tool_calls) == 1
        call = first.choices[0].message.tool_calls[0]
        assert json.loads(call.function.arguments)["u"] in ("c", "f") and call.function.name == "unit"
        with client.chat.completions.stream(model=live.base, messages=messages, tools=[unit], max_tokens=60,
                                            tool_choice="required", temperature=0.7, seed=1) as stream:
            pieces = [e.arguments_delta for e in stream if e.type == "tool_calls.function.arguments.delta"]
            streamed = stream.get_final_completion()
        assert "".join(pieces) == streamed.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
        history = [*messages, {"role": "assistant", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "unit", "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "ok"}]
        second = client.chat.completions.create(model=live.base, messages=history, tools=[unit], max_tokens=1,
                                                temperature=0)
        history[1]["tool_calls"][0]["function"]["arguments"] = json.loads(call.function.arguments)
        expected = tokenizer.apply_chat_template(history, tools=[unit], tokenize=False, add_generation_prompt=True)
        assert "Given the following functions" in expected and '{"name": "unit", "parameters": {"u": ' in expected
        assert "<|start_header_id|>ipython<|end_header_id|>" in expected
        prompt_ids = encode_prompt(tokenizer, history, tools=[unit])
        assert tokenizer.decode(prompt_ids) == expected and second.usage.prompt_tokens == len(prompt_ids)


# Mistral 7B Instruct v0.3's chat template (tool calls as `[TOOL_CALLS]` and a list, ids of 9 characters).
MISTRAL_TOOLS = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""


def test_mistral_call_lists_are_read_whole_and_streamed_whole():
    from tunery.data.tools import MISTRAL_LIST
    from tunery.server.structured import ToolCallStream, parse_tool_calls

    tools = [WEATHER["function"]]
    answer = ('[{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "c"}}, '
              '{"name": "get_weather", "arguments": {"city": "Rome", "unit": "f"}}]')
    for text in (answer, "[TOOL_CALLS] " + answer, " " + answer):
        content, calls = parse_tool_calls(text, tools, MISTRAL_LIST)
        assert content is None and [json.loads(c.function.arguments)["city"] for c in calls] == ["Oslo", "Rome"]
    for text in ('[{"name": "nope", "arguments": {}}]', "It is sunny.", "[1, 2]"):
        assert parse_tool_calls(text, tools, MISTRAL_LIST) == (text, [])
    stream = ToolCallStream(tools, MISTRAL_LIST)
    deltas = [d for i in range(0, len(answer), 5) for d in stream.feed(answer[i:i + 5])] + stream.finish()
    heads = [c for d in deltas for c in d.tool_calls or [] if c.id]
    assert [c.index for c in heads] == [0, 1] and stream.calls == 2 and not any(d.content for d in deltas)
    text = "[Note] it is sunny."
    stream = ToolCallStream(tools, MISTRAL_LIST)
    deltas = [d for i in range(0, len(text), 4) for d in stream.feed(text[i:i + 4])] + stream.finish()
    assert "".join(d.content or "" for d in deltas) == text and stream.calls == 0


def test_a_mistral_template_gets_tools_natively_with_its_short_call_ids(live):
    """Mistral's template lists the tools before the last user message and takes call ids of 9 letters or
    digits: the OpenAI ids of the history are mapped to such ids (the same call and result alike), and a
    required call comes back as a call."""
    from tunery.data.template import encode_prompt
    from tunery.data.tools import MISTRAL_LIST, native_tool_syntax, short_call_ids

    tokenizer = live.state.tokenizer
    with chat_template(tokenizer, MISTRAL_TOOLS):
        assert native_tool_syntax(tokenizer) == MISTRAL_LIST
        client = live.client()
        messages = [{"role": "user", "content": "What is the weather in Paris?"}]
        first = client.chat.completions.create(model=live.base, messages=messages, tools=[WEATHER], max_tokens=200,
                                               tool_choice="required", temperature=0.7, seed=1,
                                               parallel_tool_calls=False)
        assert first.choices[0].finish_reason == "tool_calls" and len(first.choices[0].message.tool_calls) == 1
        call = first.choices[0].message.tool_calls[0]
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
        history = [*messages, {"role": "assistant", "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "18 degrees"}]
        second = client.chat.completions.create(model=live.base, messages=history, tools=[WEATHER], max_tokens=1,
                                                temperature=0)
        history[1]["tool_calls"][0]["function"]["arguments"] = json.loads(call.function.arguments)
        short = [short_call_ids(m) for m in history]
        assert short[1]["tool_calls"][0]["id"] == short[2]["tool_call_id"] and len(short[2]["tool_call_id"]) == 9
        expected = tokenizer.apply_chat_template(short, tools=[WEATHER], tokenize=False, add_generation_prompt=True)
        assert "[AVAILABLE_TOOLS]" in expected and '[TOOL_CALLS] [{"name": "get_weather"' in expected
        prompt_ids = encode_prompt(tokenizer, history, tools=[WEATHER])
        assert tokenizer.decode(prompt_ids) == expected and second.usage.prompt_tokens == len(prompt_ids)


def test_embeddings_through_the_openai_client(live):
    """Mean-pooled, unit-length hidden states in OpenAI's shape (the client asks for base64 by default)."""
    import math

    client = live.client()
    texts = ["The VPN is down.", "Printer offline on floor 3", "The VPN is down."]
    result = client.embeddings.create(model=live.base, input=texts)
    vectors = [item.embedding for item in result.data]
    hidden = live.state.engine.model.config.hidden_size
    assert [item.index for item in result.data] == [0, 1, 2] and all(len(v) == hidden for v in vectors)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-4 for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    tokens = [len(live.state.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert result.usage.prompt_tokens == result.usage.total_tokens == sum(tokens) and result.model == live.base
    floats = client.embeddings.create(model=live.base, input="The VPN is down.", encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, vectors[0])) < 1e-6
    adapted = client.embeddings.create(model="support", input="The VPN is down.").data[0].embedding
    assert adapted != vectors[0]  # the adapter's own hidden states
    ids = live.state.tokenizer("The VPN is down.", add_special_tokens=False)["input_ids"]
    assert client.embeddings.create(model=live.base, input=ids).data[0].embedding == vectors[0]
    for bad, param in (([""], "input"), ([[10 ** 9]], "input")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model=live.base, input=bad)
        assert caught.value.body["param"] == param
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input="x")
