"""The real default model behind the server: its own chat template and end-of-turn token end answers, and
the structured-output clients people use (LangChain's `with_structured_output` in each of its modes, a tool
call round trip through the official client) work on it."""

import json

import pytest

from tests.server.conftest import free_port, start_server


@pytest.fixture(scope="module")
def real_client(default_model_dir, tmp_path_factory):
    from openai import OpenAI

    from tunery.server.settings import ServerSettings

    settings = ServerSettings(model=str(default_model_dir), served_name="smollm2", no_auth=True, port=free_port(),
                              database=tmp_path_factory.mktemp("real") / "t.db", max_n=10)
    app, server, thread = start_server(settings)
    try:
        yield OpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key="unused", max_retries=0, timeout=300)
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.mark.slow
def test_real_model_answers_and_stops_at_end_of_turn(real_client):
    result = real_client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=48,
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}])
    answer = result.choices[0].message.content
    assert "Paris" in answer
    assert result.choices[0].finish_reason == "stop" and "<|im_end|>" not in answer
    assert result.usage.completion_tokens < 48


@pytest.mark.slow
@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_structured_output_on_the_default_model(real_client, method):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Ticket(BaseModel):
        """A triaged helpdesk ticket."""

        category: str = Field(description="network, hardware or access", pattern="^(network|hardware|access)$")
        urgent: bool

    llm = ChatOpenAI(model="smollm2", base_url=str(real_client.base_url), api_key="unused", temperature=0,
                     max_tokens=120, max_retries=0)
    if method == "json_mode":  # the schema is not sent: the prompt must say which keys
        structured = llm.with_structured_output(Ticket, method=method, include_raw=True)
        prompt = ("Triage the ticket as JSON with keys category (network, hardware or access) and urgent "
                  "(true or false): the VPN is down for everyone.")
    else:
        structured = llm.with_structured_output(Ticket, method=method, strict=True, include_raw=True)
        prompt = "The VPN is down for everyone."
    result = structured.invoke(prompt)
    assert result["parsing_error"] is None and isinstance(result["parsed"], Ticket), result["raw"]
    assert result["parsed"].category == "network"


@pytest.mark.slow
def test_streamed_tool_call_round_trip_on_the_default_model(real_client):
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                       "additionalProperties": False}, "strict": True}}
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    with real_client.chat.completions.stream(model="smollm2", messages=messages, tools=[weather],
                                             tool_choice="required", temperature=0, max_tokens=60) as stream:
        pieces = [event.arguments_delta for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["city"] == "Paris" and "".join(pieces) == call.function.arguments
    assert len(pieces) > 1  # the arguments arrive as they are generated, not in one piece
    messages += [{"role": "assistant", "tool_calls": [{"id": call.id, "type": "function", "function": {
                     "name": call.function.name, "arguments": call.function.arguments}}]},
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature_c": 18})}]
    answer = real_client.chat.completions.create(model="smollm2", messages=messages, tools=[weather], temperature=0,
                                                 max_tokens=40)
    assert answer.choices[0].finish_reason == "stop" and "18" in answer.choices[0].message.content


@pytest.mark.slow
def test_fifty_sampled_json_schema_answers_of_the_default_model_all_validate(real_client):
    import jsonschema

    from tests.server.test_structured import TICKET, schema_format

    answers = []
    for seed in range(5):  # 5 requests of 10 sampled choices, decoded together
        result = real_client.chat.completions.create(
            model="smollm2", n=10, seed=seed, temperature=1.0, max_tokens=200, response_format=schema_format(),
            messages=[{"role": "user", "content": "Triage: the printer on floor 3 is offline."}])
        assert [c.finish_reason for c in result.choices] == ["stop"] * 10
        answers += [json.loads(c.message.content) for c in result.choices]
    for answer in answers:
        jsonschema.validate(answer, TICKET)
    assert len(answers) == 50 and len({json.dumps(a, sort_keys=True) for a in answers}) > 5
