"""A request's own logit changes, in the engine's picking step on every backend: a grammar's mask
(the output always parses and validates), logit_bias, presence/frequency penalties, logprobs."""

from __future__ import annotations

import json
import math
import re

import pytest

from tests.inference.test_engine import prompt
from tunery.inference import Engine, SamplingParams
from tunery.inference.grammar import GrammarError, compile_schema, json_object_grammar

SCHEMA = {"type": "object", "properties": {"category": {"enum": ["network", "hardware", "access"]},
                                           "priority": {"type": "integer", "minimum": 1, "maximum": 4},
                                           "tags": {"type": "array", "items": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                                                    "maxItems": 2}},
          "required": ["category", "priority", "tags"], "additionalProperties": False}


@pytest.fixture
def engine(served):
    model, tokenizer, stops, decode, _, _ = served
    eng = Engine(model, tokenizer, stops, decode=decode, max_batch_size=8)
    yield eng
    eng.stop()


def valid(answer: dict) -> bool:
    return (set(answer) == {"category", "priority", "tags"} and answer["category"] in SCHEMA["properties"]
            ["category"]["enum"] and 1 <= answer["priority"] <= 4 and len(answer["tags"]) <= 2
            and all(re.fullmatch("[a-z]{1,8}", t) for t in answer["tags"]))


def test_json_schema_output_always_parses_and_validates(served, engine):
    _, tokenizer, *_ = served
    grammar = compile_schema(SCHEMA, strict=True)
    for seed, temperature in [(0, 0.0), (1, 1.0), (2, 1.5), (3, 1.0)]:
        params = SamplingParams(max_new_tokens=120, temperature=temperature, seed=seed, grammar=grammar)
        event = engine.generate(prompt(tokenizer, "Printer offline on floor 3"), params)
        assert event.finish_reason == "stop", event.text
        assert valid(json.loads(event.text)), event.text


def test_json_object_mode_and_unconstrained_rows_share_a_batch(served, engine):
    _, tokenizer, _, decode, _, _ = served
    import threading

    results = {}

    def run(name, params):
        results[name] = engine.generate(prompt(tokenizer, "VPN token expired"), params)

    threads = [threading.Thread(target=run, args=("json", SamplingParams(max_new_tokens=60, temperature=1.0, seed=4,
                                                                          grammar=json_object_grammar()))),
               threading.Thread(target=run, args=("free", SamplingParams(max_new_tokens=20, temperature=0.0)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if results["json"].finish_reason == "stop":
        assert isinstance(json.loads(results["json"].text), dict)
    else:  # cut by max_tokens: still a prefix of a JSON object
        assert results["json"].text.startswith("{")
    alone = engine.generate(prompt(tokenizer, "VPN token expired"), SamplingParams(max_new_tokens=20, temperature=0.0))
    if decode == "torch":  # the int4 lane's rows agree with a lone pass only up to near ties
        assert results["free"].text == alone.text


def test_logit_bias_penalties_and_logprobs(served, engine):
    _, tokenizer, *_ = served
    ids = prompt(tokenizer, "hi")
    forced = tokenizer.convert_tokens_to_ids("x")
    event = engine.generate(ids, SamplingParams(max_new_tokens=5, temperature=0.0, logit_bias=((forced, 100.0),),
                                                logprobs=3))
    assert event.text == "xxxxx" and len(event.logprobs) == 5
    first = event.logprobs[0]
    assert first["token"] == "x" and first["logprob"] > -0.01 and len(first["top_logprobs"]) == 3
    assert first["top_logprobs"][0]["token"] == "x"
    assert all(a["logprob"] >= b["logprob"] for a, b in zip(first["top_logprobs"], first["top_logprobs"][1:]))
    penalized = engine.generate(ids, SamplingParams(max_new_tokens=5, temperature=0.0, frequency_penalty=2.0,
                                                    presence_penalty=2.0, logit_bias=((forced, 3.0),)))
    plain = engine.generate(ids, SamplingParams(max_new_tokens=5, temperature=0.0, logit_bias=((forced, 3.0),)))
    assert plain.text.count("x") > penalized.text.count("x") or plain.text != penalized.text
    assert math.isfinite(first["logprob"])


@pytest.mark.parametrize("schema, message", [
    ({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": False}, "'required'"),
    ({"type": "object", "properties": {}}, "additionalProperties"),
    ({"type": "array"}, "root must be an object"),
    ({"type": "object", "properties": {}, "additionalProperties": False, "patternProperties": {}}, "patternProperties"),
])
def test_strict_schemas_follow_openais_rules(schema, message):
    with pytest.raises(GrammarError, match=message):
        compile_schema(schema, strict=True)
