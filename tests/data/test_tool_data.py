"""OpenAI tool-calling chat data: located validation, rendering through the chat template, loss masks.

A template that renders tools itself (a Qwen-style one here) gets `tools`, `tool_calls` and role
`tool` as they are; the tiny model's plain ChatML gets the Hermes form. Either way the mask covers
the assistant's calls and answers, never the tool results.
"""

from __future__ import annotations

import json

import pytest

from tunery.data import read_dataset
from tunery.data.template import encode_conversation, encode_prompt
from tunery.data.tools import native_tool_tags
from tunery.models import load_tokenizer
from tunery.types import Conversation, Turn

from .test_template import _trained_spans

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}
ROW = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                    {"role": "assistant", "tool_calls": [CALL]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 12}"},
                    {"role": "assistant", "content": "It is 12 C in Paris."}],
       "tools": [WEATHER]}
# Qwen2.5's tool handling, trimmed: tools in the system turn, calls as <tool_call> JSON, results as user turns.
QWEN_STYLE = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}{% if messages[0].role == 'system' %}"
    "{{ messages[0].content + '\n\n' }}{% endif %}{{ '# Tools\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' + tool | tojson }}{% endfor %}"
    "{{ '\n</tools>\nReply with <tool_call></tool_call> tags.<|im_end|>\n' }}"
    "{%- elif messages[0].role == 'system' %}{{ '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{ '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}"
    "{%- elif message.role == 'assistant' %}{{ '<|im_start|>assistant' }}"
    "{%- if message.content %}{{ '\n' + message.content }}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}{%- set call = call.function %}"
    "{{ '\n<tool_call>\n{\"name\": \"' + call.name + '\", \"arguments\": ' + call.arguments | tojson + '}\n</tool_call>' }}"
    "{%- endfor %}{{ '<|im_end|>\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{ '<|im_start|>user' }}{%- endif %}"
    "{{ '\n<tool_response>\n' + message.content + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{ '<|im_end|>\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{%- endif %}"
)


def _conversation(tmp_path, row=ROW) -> Conversation:
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(row) + "\n")
    report = read_dataset(path, min_examples=1)
    assert not report.problems, report.problems
    return report.conversations[0]


@pytest.fixture
def qwen_style_tokenizer(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.chat_template = QWEN_STYLE
    return tokenizer


def test_tool_data_is_read_with_parsed_arguments(tmp_path):
    conv = _conversation(tmp_path)
    assert conv.tools == (WEATHER,)
    call = conv.turns[1]
    assert call.train and call.content == ""
    assert call.tool_calls[0]["function"]["arguments"] == {"city": "Paris"}
    assert conv.turns[2].role == "tool" and conv.turns[2].tool_call_id == "call_1" and not conv.turns[2].train


@pytest.mark.parametrize(("change", "code", "field"), [
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(arguments="{city"), "invalid_tool_arguments",
     "messages[1].tool_calls[0].function.arguments"),
    (lambda r: r["messages"][1]["tool_calls"][0]["function"].update(name="get_time"), "unknown_tool",
     "messages[1].tool_calls[0].function.name"),
    (lambda r: r["messages"][2].update(tool_call_id="call_9"), "unknown_tool_call_id", "messages[2].tool_call_id"),
    (lambda r: r["messages"].pop(1), "tool_without_call", "messages[1].role"),
    (lambda r: r["messages"][0].update(tool_calls=[CALL]), "invalid_tool_call", "messages[0].tool_calls"),
    (lambda r: r["tools"][0]["function"].update(name="get weather"), "invalid_tool", "tools[0].function.name"),
])
def test_bad_tool_data_is_located(tmp_path, change, code, field):
    row = json.loads(json.dumps(ROW))
    change(row)
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(row) + "\n")
    report = read_dataset(path, min_examples=1)
    located = [(p.code, p.field, p.line) for p in report.errors if p.code != "too_few_examples"]
    assert located == [(code, field, 1)]


def test_sharegpt_tool_turns_read_as_tool_calls(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Weather in Paris?"},
                             {"from": "function_call", "value": "{\"name\": \"get_weather\", \"arguments\": "
                                                                "{\"city\": \"Paris\"}}"},
                             {"from": "observation", "value": "{\"temp_c\": 12}"},
                             {"from": "gpt", "value": "It is 12 C in Paris."}],
           "tools": json.dumps([WEATHER["function"]])}
    conv = _conversation(tmp_path, row)
    assert conv.tools == (WEATHER,)
    assert [t.role for t in conv.turns] == ["user", "assistant", "tool", "assistant"]
    assert conv.turns[1].tool_calls[0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}


def test_hermes_form_for_a_template_without_tools(tmp_path, tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert native_tool_tags(tokenizer) is None
    example = encode_conversation(tokenizer, _conversation(tmp_path))
    text = tokenizer.decode(example.input_ids)
    assert text.startswith("<|im_start|>system\nYou may call functions") and '"name": "get_weather"' in text
    assert "<|im_start|>user\n<tool_response>\n{\"temp_c\": 12}\n</tool_response><|im_end|>" in text
    assert _trained_spans(tokenizer, example) == [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|im_end|>',
        "It is 12 C in Paris.<|im_end|>"]


def test_template_that_renders_tools_gets_them_as_they_are(tmp_path, qwen_style_tokenizer):
    tokenizer = qwen_style_tokenizer
    assert native_tool_tags(tokenizer) == ("<tool_call>\n", "\n</tool_call>")
    conv = _conversation(tmp_path)
    example = encode_conversation(tokenizer, conv)
    expected = tokenizer.apply_chat_template(conv.messages(), tools=list(conv.tools), tokenize=False)
    assert tokenizer.decode(example.input_ids) == expected
    assert "# Tools\n<tools>\n" + json.dumps(WEATHER) in expected
    assert _trained_spans(tokenizer, example) == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 12 C in Paris.<|im_end|>"]
    prompt = conv.messages()[:3]
    ids = encode_prompt(tokenizer, prompt, tools=list(conv.tools))
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(prompt, tools=list(conv.tools), tokenize=False,
                                                                  add_generation_prompt=True)


def test_weight_zero_tool_call_is_not_trained(qwen_style_tokenizer):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    conv = Conversation((Turn("user", "Oslo?"), Turn("assistant", "", False, (call,)),
                         Turn("tool", "-3", tool_call_id="call_1"), Turn("assistant", "It is -3 C.", True)),
                        tools=(WEATHER,))
    example = encode_conversation(qwen_style_tokenizer, conv)
    assert _trained_spans(qwen_style_tokenizer, example) == ["It is -3 C.<|im_end|>"]


def test_data_check_counts_tool_calls_as_trained(tmp_path, tiny_model_dir):
    from tunery.data.check import check_dataset

    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps(ROW) + "\n")
    report = check_dataset(path, tokenizer=load_tokenizer(str(tiny_model_dir)), min_examples=1)
    assert report["ok"] and report["summary"]["trained_turns"] == 2 and report["summary"]["tokens"]["trained"] > 0
