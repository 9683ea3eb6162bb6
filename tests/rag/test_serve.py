"""Serving with retrieval: `--rag NAME=INDEX` over real HTTP with the official openai client, and chat."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from tests.inference.conftest import one_torch_thread, save_lora_run  # noqa: F401 (autouse fixture)
from tests.server.conftest import free_port, start_server
from tunery.errors import ConfigError
from tunery.rag import build_index


@pytest.fixture(scope="module")
def kb_index(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("kb")
    (root / "kb.md").write_text("The Osprey switch fan is part KX-1111-A.\n\nThe Heron router battery is part "
                                "MB-2222-C.\n", encoding="utf-8")
    build_index([root / "kb.md"], root / "idx", model=str(tiny_model_dir), chunk_tokens=40, overlap_tokens=0,
                top_k=1)
    return root / "idx"


@pytest.fixture(scope="module")
def support_server(tiny_model_dir, kb_index, tmp_path_factory):
    """A live server of the tiny base ("tiny") and an adapter ("support") that retrieves from kb_index:
    (app, openai client, the folder its files are under)."""
    from tunery.server.settings import ServerSettings

    root = tmp_path_factory.mktemp("support")
    run = save_lora_run(tiny_model_dir, root / "runs" / "support", seed=1)
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", adapters={"support": str(run)},
                              rag={"support": str(kb_index)}, database=root / "t.db", port=free_port(),
                              dtype="fp32", no_auth=True, default_max_tokens=4)
    app, server, thread = start_server(settings)
    try:
        yield app, openai.OpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key="unused", max_retries=0), root
    finally:
        server.should_exit = True
        thread.join(30)


def test_served_model_with_rag_cites_its_sources(support_server):
    _, client, root = support_server
    question = [{"role": "user", "content": "Which part is the Heron router battery?"}]
    answer = client.chat.completions.create(model="support", messages=question, max_tokens=3)
    citations = answer.model_extra["tunery"]["citations"]
    assert len(citations) == 1 and citations[0]["source"] == "kb.md" and citations[0]["line"] == 3
    assert "text" not in citations[0] and str(root) not in str(citations)
    plain = client.chat.completions.create(model="tiny", messages=question, max_tokens=3)
    assert "tunery" not in (plain.model_extra or {})
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 10
    stream = client.chat.completions.create(model="support", messages=question, max_tokens=3, stream=True)
    chunks = list(stream)
    assert chunks[0].model_extra["tunery"]["citations"][0]["source"] == "kb.md"
    assert all("tunery" not in (c.model_extra or {}) for c in chunks[1:])
    tools = [{"type": "function", "function": {"name": "lookup_part", "description": "Look a part up.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    with_tools = client.chat.completions.create(model="support", messages=question, max_tokens=3, tools=tools)
    assert with_tools.usage.prompt_tokens > answer.usage.prompt_tokens + 5  # the tools reach the prompt too
    assert with_tools.model_extra["tunery"]["citations"] == citations
    with pytest.raises(openai.NotFoundError):  # a client cannot point a served model at an index folder
        client.chat.completions.create(model=f"support+rag:{root}", messages=question, max_tokens=3)
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="support", max_tokens=3,
                                       messages=[{"role": "user", "content": "why " * 3000}])
    assert too_long.value.body["code"] == "context_length_exceeded"


def test_completions_retrieve_for_a_rag_model_and_cite_sources(support_server):
    app, client, root = support_server
    prompt = "The part number of the Heron router battery is"
    answer = client.completions.create(model="support", prompt=prompt, max_tokens=3, temperature=0)
    citations = answer.model_extra["tunery"]["citations"]
    assert [(c["source"], c["line"]) for c in citations] == [("kb.md", 3)]
    assert "text" not in citations[0] and str(root) not in str(citations)
    plain = client.completions.create(model="tiny", prompt=prompt, max_tokens=3, temperature=0)
    assert "tunery" not in (plain.model_extra or {})
    assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 10  # the chunk went into the prompt
    logged = app.state.tunery.store.query("SELECT messages_json FROM completions WHERE id = ?", (answer.id,))
    assert prompt in logged[0]["messages_json"] and "Context:" not in logged[0]["messages_json"]
    chunks = list(client.completions.create(model="support", prompt=prompt, max_tokens=3, temperature=0,
                                            stream=True))
    assert chunks[0].model_extra["tunery"]["citations"][0]["source"] == "kb.md"
    assert "".join(c.choices[0].text for c in chunks if c.choices) == answer.choices[0].text
    assert all("tunery" not in (c.model_extra or {}) for c in chunks[1:])
    with pytest.raises(openai.BadRequestError) as too_long:
        client.completions.create(model="support", prompt="why " * 3000, max_tokens=3)
    assert too_long.value.body["code"] == "context_length_exceeded" and too_long.value.body["param"] == "prompt"


def test_a_rag_model_takes_tools_and_response_format(support_server):
    """Tools reach the retrieved prompt through the chat template (a call, then its result, round-trips with
    citations each time), and a JSON schema constrains a retrieved answer as it does any other."""
    import json

    import jsonschema

    from tests.server.test_structured import TICKET, WEATHER, schema_format

    app, client, _ = support_server
    question = [{"role": "user", "content": "Which part is the Heron router battery, and the weather in Paris?"}]
    plain = client.chat.completions.create(model="support", messages=question, max_tokens=1)
    first = client.chat.completions.create(model="support", messages=question, tools=[WEATHER], max_tokens=200,
                                           tool_choice="required", temperature=0.7, seed=1)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert first.model_extra["tunery"]["citations"][0]["source"] == "kb.md"
    logged = app.state.tunery.tokenizer.decode(_prompt_ids(app, question, [WEATHER]))
    assert "get_weather" in logged and "MB-2222-C" in logged  # the tool list and the retrieved chunk, one prompt
    assert first.usage.prompt_tokens > plain.usage.prompt_tokens + 10
    call = choice.message.tool_calls[0]
    history = [*question, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18})}]
    second = client.chat.completions.create(model="support", messages=history, tools=[WEATHER], tool_choice="none",
                                            max_tokens=4, temperature=0)
    assert second.choices[0].message.tool_calls is None and second.model_extra["tunery"]["citations"]
    shaped = client.chat.completions.create(model="support", messages=question, response_format=schema_format(),
                                            max_tokens=400, temperature=1.0, seed=3)
    assert shaped.choices[0].finish_reason == "stop" and shaped.model_extra["tunery"]["citations"]
    jsonschema.validate(json.loads(shaped.choices[0].message.content), TICKET)


def _prompt_ids(app, messages, tools):
    """The prompt a +rag model's chat request gets, planned as the server plans it."""
    from tunery.server.protocol import ChatCompletionRequest
    from tunery.server.serving_chat import plan_chat

    request = ChatCompletionRequest(model="support", messages=messages, tools=tools, max_tokens=4)
    return plan_chat(app.state.tunery, request).prompt_ids


def test_rag_for_an_unknown_served_name_is_refused(tiny_model_dir, kb_index, tmp_path):
    from tunery.server.settings import ServerSettings
    from tunery.server.state import build_state

    settings = ServerSettings(model=str(tiny_model_dir), rag={"nobody": str(kb_index)}, database=tmp_path / "t.db",
                              dtype="fp32", no_auth=True)
    with pytest.raises(ConfigError, match="no served model is named 'nobody'"):
        build_state(settings)
    import json
    import shutil

    from tunery.errors import RetrievalError

    foreign = shutil.copytree(kb_index, tmp_path / "foreign")  # chunked by another tokenizer
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["settings"]["tokenizer_sha256"] = "0" * 64
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", rag={"tiny": str(foreign)},
                              database=tmp_path / "t.db", dtype="fp32", no_auth=True)
    with pytest.raises(RetrievalError) as wrong:  # the rebuild command names the model, not the served name
        build_state(settings)
    assert f"--model {tiny_model_dir} " in wrong.value.hint and "--model tiny " not in wrong.value.hint


def test_chat_with_rag_prints_sources(tiny_model_dir, kb_index):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tunery", "chat", f"{tiny_model_dir}+rag:{kb_index}",
                           "--max-tokens", "3", "--temperature", "0"], input="Osprey switch fan part?\n/exit\n",
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sources: [1] kb.md:1" in done.stdout


def test_a_registered_version_with_an_index_serves_by_name_with_retrieval(tiny_model_dir, kb_index, tmp_path):
    import json
    import shutil

    from tunery.errors import RetrievalError
    from tunery.platform.registry import describe, register_run, served_ref
    from tunery.server.settings import ServerSettings
    from tunery.store import create_key, open_store

    db = tmp_path / "tunery.db"
    store = open_store(db)
    _, admin = create_key(store, "admin", admin=True)
    run = save_lora_run(tiny_model_dir, tmp_path / "runs" / "helpdesk", seed=2)
    with pytest.raises(RetrievalError, match="does not exist"):
        register_run(store, run, "helpdesk", rag_index=tmp_path / "no-index")
    first = register_run(store, run, "helpdesk", alias="production", rag_index=kb_index)
    assert first.ref == "helpdesk@1" and describe(store, "helpdesk")["rag_index"] == str(kb_index.resolve())
    assert served_ref(first) == f"{run.resolve()}+rag:{kb_index.resolve()}"  # what promotion gates compare
    register_run(store, run, "helpdesk")  # helpdesk@2: the same run, no index
    foreign = tmp_path / "foreign-index"  # an index chunked by another tokenizer, found only at serve time
    shutil.copytree(kb_index, foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["settings"]["tokenizer_sha256"] = "0" * 64
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    register_run(store, run, "helpdesk", rag_index=foreign)  # helpdesk@3
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", database=db, port=free_port(),
                              dtype="fp32", default_max_tokens=4)
    _, server, thread = start_server(settings)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key=admin, max_retries=0)
    question = [{"role": "user", "content": "Which part is the Heron router battery?"}]
    try:
        answer = client.chat.completions.create(model="helpdesk", messages=question, max_tokens=3, temperature=0)
        assert answer.model == "helpdesk@1"
        citations = answer.model_extra["tunery"]["citations"]
        assert [(c["source"], c["line"]) for c in citations] == [("kb.md", 3)]
        plain = client.chat.completions.create(model="helpdesk@2", messages=question, max_tokens=3, temperature=0)
        assert "tunery" not in (plain.model_extra or {})
        assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 10  # the chunk is in helpdesk@1's prompt
        with pytest.raises(openai.InternalServerError) as refused:  # never served without the index it was given
            client.chat.completions.create(model="helpdesk@3", messages=question, max_tokens=3)
        assert refused.value.status_code == 503 and refused.value.body["code"] == "index_tokenizer"
        assert str(tmp_path) not in refused.value.message and str(tiny_model_dir) not in refused.value.message
        import httpx

        shown = httpx.get(f"http://127.0.0.1:{settings.port}/v1/registry/models/helpdesk@1",
                          headers={"Authorization": f"Bearer {admin}"}, timeout=30).json()
        assert shown["rag_index"] is True and str(tmp_path) not in json.dumps(shown)
    finally:
        server.should_exit = True
        thread.join(30)


def test_models_register_cli_attaches_an_index(tiny_model_dir, kb_index, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "TUNERY_DATABASE_URL"}, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "TUNERY_HOME": str(tmp_path / "home")}
    run = save_lora_run(tiny_model_dir, tmp_path / "runs" / "desk", seed=4)

    def tunery(*args):
        return subprocess.run([sys.executable, "-m", "tunery", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    registered = tunery("models", "register", str(run), "--name", "desk", "--rag", str(kb_index))
    assert registered.returncode == 0, registered.stderr
    assert f"registered desk@1, retrieving from {kb_index.resolve()}" in " ".join(registered.stdout.split())
    shown = tunery("models", "show", "desk@1")
    assert f"retrieves from: {kb_index.resolve()}" in shown.stdout
    missing = tunery("models", "register", str(run), "--name", "desk", "--rag", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "tunery rag index DOCS... --out" in " ".join((missing.stdout + missing.stderr).split())


def test_a_rebuilt_index_is_used_without_a_restart(tiny_model_dir, tmp_path, caplog, monkeypatch):
    """`tunery rag index --out` on the folder a running server answers from: the next request retrieves from
    the new index; a broken rebuild is logged and the index opened before keeps answering. (The server it
    starts also shows that a server bounds oneDNN's primitive cache.)"""
    from tunery.server.settings import ServerSettings
    from tunery.training.precision import ONEDNN_CACHE_CAPACITY

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "old.md").write_text("The Heron router battery is part MB-2222-C.\n", encoding="utf-8")
    index = tmp_path / "idx"
    build_index([docs / "old.md"], index, model=str(tiny_model_dir), chunk_tokens=40, overlap_tokens=0, top_k=1)
    run = save_lora_run(tiny_model_dir, tmp_path / "runs" / "support", seed=1)
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", adapters={"support": str(run)},
                              rag={"support": str(index)}, database=tmp_path / "t.db", port=free_port(),
                              dtype="fp32", no_auth=True, default_max_tokens=2)
    app, server, thread = start_server(settings)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "Which part is the Heron router battery?"}]
    # A server bounds oneDNN's per-shape cache as training does (each prompt length is a new shape).
    assert os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY") == str(ONEDNN_CACHE_CAPACITY)

    def cited() -> list[str]:
        answer = client.chat.completions.create(model="support", messages=question, max_tokens=2)
        return [c["source"] for c in answer.model_extra["tunery"]["citations"]]

    try:
        assert cited() == ["old.md"]
        (docs / "new.md").write_text("The Heron router battery is now part MB-3333-D.\n", encoding="utf-8")
        build_index([docs / "new.md"], index, model=str(tiny_model_dir), chunk_tokens=40, overlap_tokens=0, top_k=1,
                    rebuild=True)
        assert cited() == ["new.md"]
        (index / "manifest.json").write_text("{", encoding="utf-8")  # a rebuild gone wrong
        with caplog.at_level("WARNING", logger="tunery.server"):
            assert cited() == ["new.md"]
        assert any("cannot be used" in r.getMessage() for r in caplog.records)
    finally:
        server.should_exit = True
        thread.join(30)
