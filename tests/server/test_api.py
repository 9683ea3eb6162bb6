"""The server through the official openai client: models, chat, streaming, adapters, keys, feedback."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading

import httpx
import openai
import pytest
import torch

from tunery.data.template import encode_prompt

MESSAGES = [{"role": "user", "content": "The printer on floor three is offline again"}]


def greedy(client, model="tiny", messages=MESSAGES, **kwargs):
    return client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=10, **kwargs)


def reference_text(live, messages, adapter_dir=None, max_new_tokens=10) -> str:
    """Greedy text from Hugging Face generate (with peft for an adapter), independent of the engine."""
    from transformers import AutoModelForCausalLM

    from tunery.data.template import stop_token_ids

    tok = live.state.tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(live.state.base_path), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    ids = encode_prompt(tok, messages)
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_list_models_shows_base_and_adapter(live):
    models = {m.id: m for m in live.client().models.list().data}
    assert set(models) == {"tiny", "support"}
    assert models["support"].model_extra["parent"] == "tiny"


def test_chat_completion_matches_reference_and_reports_usage(live):
    result = greedy(live.client())
    assert result.object == "chat.completion" and result.id.startswith("chatcmpl-")
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == reference_text(live, MESSAGES)
    assert result.usage.prompt_tokens == len(encode_prompt(live.state.tokenizer, MESSAGES))
    assert result.usage.completion_tokens == 10 or result.choices[0].finish_reason == "stop"
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens


def test_streaming_yields_the_same_text(live):
    client = live.client()
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0, max_tokens=10,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == greedy(client).choices[0].message.content
    assert finishes in (["length"], ["stop"])
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed


def test_adapter_by_name_matches_peft(live, adapter_run):
    result = greedy(live.client(), model="support")
    assert result.model == "support"
    assert result.choices[0].message.content == reference_text(live, MESSAGES, adapter_run / "adapter")
    assert result.choices[0].message.content != greedy(live.client()).choices[0].message.content


def test_text_completion_and_n_choices_with_seed(live):
    client = live.client()
    result = client.completions.create(model="tiny", prompt="Part number", max_tokens=5, temperature=0)
    assert result.object == "text_completion" and result.choices[0].finish_reason in ("length", "stop")
    sampled = client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, seed=11, max_tokens=8,
                                             temperature=1.0)
    again = client.chat.completions.create(model="tiny", messages=MESSAGES, n=3, seed=11, max_tokens=8,
                                           temperature=1.0)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert [c.message.content for c in sampled.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in sampled.choices}) > 1


def test_concurrent_clients_do_not_mix_answers(live):
    questions = ["hi", "Please reset my VPN token", "What is the capital of France?", "Outlook keeps crashing",
                 "Part number TX-4410", "You are a helpful assistant.", "The queue is stuck", "since Monday"]
    jobs = [([{"role": "user", "content": q}], "support" if i % 3 == 0 else "tiny") for i, q in enumerate(questions)]
    solo = [greedy(live.client(), model=m, messages=msgs).choices[0].message.content for msgs, m in jobs]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda job: greedy(live.client(), model=job[1], messages=job[0])
                                 .choices[0].message.content, jobs))
    assert together == solo
    assert len(set(solo)) > 1


def test_keys_are_required_and_checked(live):
    assert httpx.get(live.url + "/health").status_code == 200
    missing = httpx.get(live.url + "/v1/models")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as bad:
        live.client(key="tny_0000_nope").models.list()
    assert bad.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError):
        live.client().post("/adapters", body={"name": "x", "run": "y"}, cast_to=object)
    assert live.user_key not in bad.value.response.text


def test_adapter_load_and_unload_while_serving(live, adapter_run):
    admin = live.client(key=live.admin_key)
    stream = live.client().chat.completions.create(model="support", messages=MESSAGES, temperature=0,
                                                   max_tokens=10, stream=True)
    first = next(iter(stream))
    admin.post("/adapters", body={"name": "support-copy", "run": str(adapter_run)}, cast_to=object)
    copy = greedy(live.client(), model="support-copy").choices[0].message.content
    admin.delete("/adapters/support-copy", cast_to=object)
    rest = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert (first.choices[0].delta.content or "") + rest == copy  # same weights, same answer, undisturbed
    with pytest.raises(openai.NotFoundError):
        greedy(live.client(), model="support-copy")
    with pytest.raises(openai.NotFoundError):  # only runs the server knows, never arbitrary paths
        admin.post("/adapters", body={"name": "evil", "run": "/etc"}, cast_to=object)
    with pytest.raises(openai.BadRequestError):
        admin.post("/adapters", body={"name": "../x", "run": str(adapter_run)}, cast_to=object)


def post_raw(live, path, content, key=None, headers=None):
    return httpx.post(live.url + path, content=content, timeout=60,
                      headers={"Authorization": f"Bearer {key or live.user_key}", "Content-Type": "application/json",
                               **(headers or {})})


BAD_REQUESTS = [
    ({"model": "nope", "messages": MESSAGES}, 404, "model_not_found"),
    ({"model": "tiny", "messages": []}, 400, None),
    ({"model": "tiny", "messages": [{"role": "user", "content": ""}]}, 400, None),
    ({"model": "tiny", "messages": "hello"}, 400, None),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    ({"model": "tiny", "messages": MESSAGES, "temperature": "hot"}, 400, None),
    ({"model": "tiny", "messages": MESSAGES, "temperature": 5}, 400, None),
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": 5000}, 400, "context_length_exceeded"),
    ({"model": "tiny", "messages": MESSAGES, "max_tokens": 0}, 400, None),
    ({"model": "tiny", "messages": MESSAGES, "n": 5}, 400, "n_too_large"),
    ({"model": "tiny", "messages": MESSAGES, "stop": ["a", "b", "c"]}, 400, None),
    ({"model": "tiny", "messages": MESSAGES, "stop": ["x" * 100]}, 400, None),
    ({"model": "tiny", "messages": MESSAGES, "logit_bias": {"1": 200}}, 400, None),
    ({"model": "tiny", "messages": MESSAGES, "logit_bias": {"not-a-token": 2}}, 400, None),
    ({"model": 3, "messages": MESSAGES}, 400, None),
    ({"messages": MESSAGES}, 400, None),
    ({"model": "tiny", "messages": [{"role": "user", "content": "x" * 6000}]}, 400, "context_length_exceeded"),
]


@pytest.mark.parametrize(("body", "status", "code"), BAD_REQUESTS)
def test_bad_chat_requests_get_openai_errors(live, body, status, code):
    response = post_raw(live, "/v1/chat/completions", json.dumps(body))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code
    assert "Traceback" not in response.text and str(live.state.base_path) not in response.text


def test_null_fields_mean_defaults_and_developer_is_system(live):
    body = {"model": "tiny", "messages": [{"role": "developer", "content": "Be brief."}, *MESSAGES],
            "temperature": None, "top_p": None, "n": None, "stop": None, "seed": None, "max_tokens": 4}
    response = post_raw(live, "/v1/chat/completions", json.dumps(body))
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 1


def test_malformed_and_oversized_bodies(live):
    invalid = post_raw(live, "/v1/chat/completions", b"{not json")
    assert invalid.status_code == 400 and "JSON" in invalid.json()["error"]["message"]
    huge = post_raw(live, "/v1/chat/completions", json.dumps({"model": "tiny", "messages": MESSAGES,
                                                               "user": "x" * 100_000}))
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"
    unknown = httpx.get(live.url + "/v2/nothing")
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert httpx.get(live.url + "/health").status_code == 200  # still alive


class ForwardGate:
    """Holds the engine inside its `hold_at`-th model forward until the test releases it.

    With the engine parked there, what the server does about a client that left is decided by the
    test's order of events, not by how fast this machine happens to generate.
    """

    def __init__(self, model, hold_at: int):
        self.hold_at, self.count = hold_at, 0
        self.reached, self.release = threading.Event(), threading.Event()
        self._handle = model.register_forward_hook(self._on_forward)

    def _on_forward(self, *_):
        self.count += 1
        if self.count == self.hold_at:
            self.reached.set()
            assert self.release.wait(HANG_S), "the test never released the engine"

    def close(self):
        self.release.set()
        self._handle.remove()


HANG_S = 120  # only a hung server waits this long: every wait below ends by an event


@pytest.fixture
def aborts(live, monkeypatch):
    """The request ids the server aborts, and an event set at the first one (a spy on Engine.abort)."""
    engine, seen, first = live.state.engine, [], threading.Event()
    abort = engine.abort

    def spy(request_id):
        abort(request_id)
        seen.append(request_id)
        first.set()

    monkeypatch.setattr(engine, "abort", spy)
    return seen, first


def _leaves_the_request_running(live, hold_at):
    """Left alone, the request below would run past the gate (so only an abort can stop it there)."""
    from tunery.inference import SamplingParams

    ids = encode_prompt(live.state.tokenizer, MESSAGES)
    alone = live.state.engine.generate(ids, SamplingParams(max_new_tokens=hold_at + 5, temperature=1.0, seed=5))
    return alone.finish_reason == "length"


DISCONNECT_BODY = {"model": "tiny", "messages": MESSAGES, "max_tokens": 900, "temperature": 1.0, "seed": 5}


def test_streaming_client_disconnect_aborts_generation(live, aborts):
    engine, (seen, aborted) = live.state.engine, aborts
    assert _leaves_the_request_running(live, hold_at=3)
    gate = ForwardGate(engine.model, hold_at=3)
    try:
        with httpx.stream("POST", live.url + "/v1/chat/completions", timeout=60,
                          headers={"Authorization": f"Bearer {live.user_key}"},
                          json={**DISCONNECT_BODY, "stream": True}) as response:
            assert response.status_code == 200
            next(line for line in response.iter_lines() if line.startswith("data:"))  # the request is live
        assert aborted.wait(HANG_S)  # the server saw the client go while the engine was still generating
        assert gate.count <= gate.hold_at
    finally:
        gate.close()
    assert engine.wait_idle(HANG_S)
    assert len(seen) == 1
    assert gate.count <= gate.hold_at + 1  # the held pass finishes; no pass after the abort


def test_non_streaming_client_disconnect_aborts_generation(live, aborts):
    engine, (seen, aborted) = live.state.engine, aborts
    assert _leaves_the_request_running(live, hold_at=2)
    body = json.dumps(DISCONNECT_BODY).encode()
    host, port = httpx.URL(live.url).host, httpx.URL(live.url).port
    gate = ForwardGate(engine.model, hold_at=2)
    try:
        with socket.create_connection((host, port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n"
                         + f"Authorization: Bearer {live.user_key}\r\nContent-Type: application/json\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            assert gate.reached.wait(HANG_S)  # generating: the client hangs up before any answer
        assert aborted.wait(HANG_S)
    finally:
        gate.close()
    assert engine.wait_idle(HANG_S)
    assert len(seen) == 1
    assert gate.count <= gate.hold_at + 1


def test_keys_never_reach_the_logs(live, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    greedy(live.client())
    with pytest.raises(openai.AuthenticationError):
        live.client(key="tny_feedface_secret-guess").models.list()
    post_raw(live, "/v1/chat/completions", b"{oops")
    assert caplog.records  # the server and its libraries did log something...
    assert live.user_key not in caplog.text and "secret-guess" not in caplog.text  # ...but never a key
    assert "authorization" not in caplog.text.lower()


def test_streamed_choices_and_text_completions_match_their_plain_forms(live):
    client = live.client()
    kwargs = {"model": "tiny", "messages": MESSAGES, "n": 2, "seed": 3, "max_tokens": 8, "temperature": 1.0}
    plain = [c.message.content for c in client.chat.completions.create(**kwargs).choices]
    streamed = ["", ""]
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == plain
    text_kwargs = {"model": "support", "prompt": "Part number", "max_tokens": 6, "temperature": 0}
    whole = client.completions.create(**text_kwargs).choices[0].text
    pieces = [c.choices[0].text for c in client.completions.create(stream=True, **text_kwargs) if c.choices]
    assert "".join(pieces) == whole and len(pieces) > 1


def test_admin_key_routes_create_and_revoke_keys(live):
    admin = live.client(key=live.admin_key)
    created = admin.post("/keys", body={"name": "temp"}, cast_to=object)
    assert created["key"].startswith("tny_") and created["admin"] is False
    assert live.client(key=created["key"]).models.list().data
    listed = admin.get("/keys", cast_to=object)["data"]
    assert created["id"] in [k["id"] for k in listed] and all("key" not in k for k in listed)
    admin.delete(f"/keys/{created['id']}", cast_to=object)
    with pytest.raises(openai.AuthenticationError):
        live.client(key=created["key"]).models.list()


def test_a_waiting_client_that_gives_up_aborts_its_generation(live):
    from tunery.inference import SamplingParams

    engine, store = live.state.engine, live.state.store
    logged_before = store.query_one("SELECT COUNT(*) FROM completions")[0]
    forwards = []
    hook = engine.model.register_forward_hook(lambda *a: forwards.append(1))
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client hangs up after 0.4 s
            httpx.post(live.url + "/v1/chat/completions", timeout=0.4,
                       headers={"Authorization": f"Bearer {live.user_key}"},
                       json={"model": "tiny", "messages": MESSAGES, "max_tokens": 900, "temperature": 1.0,
                             "seed": 24})
        assert engine.wait_idle(30)
    finally:
        hook.remove()
    ids = encode_prompt(live.state.tokenizer, MESSAGES)
    alone = engine.generate(ids, SamplingParams(max_new_tokens=900, temperature=1.0, seed=24))
    assert alone.completion_tokens >= 700  # left alone, this request runs long...
    assert len(forwards) < 700  # ...but the server noticed the client leave and stopped it
    assert store.query_one("SELECT COUNT(*) FROM completions")[0] == logged_before
