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


def test_served_model_with_rag_cites_its_sources(tiny_model_dir, kb_index, tmp_path):
    from tunery.server.settings import ServerSettings

    run = save_lora_run(tiny_model_dir, tmp_path / "runs" / "support", seed=1)
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", adapters={"support": str(run)},
                              rag={"support": str(kb_index)}, database=tmp_path / "t.db", port=free_port(),
                              dtype="fp32", no_auth=True, default_max_tokens=4)
    app, server, thread = start_server(settings)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{settings.port}/v1", api_key="unused", max_retries=0)
        question = [{"role": "user", "content": "Which part is the Heron router battery?"}]
        answer = client.chat.completions.create(model="support", messages=question, max_tokens=3)
        citations = answer.model_extra["tunery"]["citations"]
        assert len(citations) == 1 and citations[0]["source"] == "kb.md" and citations[0]["line"] == 3
        assert "text" not in citations[0] and str(tmp_path) not in str(citations)
        plain = client.chat.completions.create(model="tiny", messages=question, max_tokens=3)
        assert "tunery" not in (plain.model_extra or {})
        assert answer.usage.prompt_tokens > plain.usage.prompt_tokens + 10
        stream = client.chat.completions.create(model="support", messages=question, max_tokens=3, stream=True)
        chunks = list(stream)
        assert chunks[0].model_extra["tunery"]["citations"][0]["source"] == "kb.md"
        with pytest.raises(openai.BadRequestError) as too_long:
            client.chat.completions.create(model="support", max_tokens=3,
                                           messages=[{"role": "user", "content": "why " * 3000}])
        assert too_long.value.body["code"] == "context_length_exceeded"
    finally:
        server.should_exit = True
        thread.join(30)


def test_rag_for_an_unknown_served_name_is_refused(tiny_model_dir, kb_index, tmp_path):
    from tunery.server.settings import ServerSettings
    from tunery.server.state import build_state

    settings = ServerSettings(model=str(tiny_model_dir), rag={"nobody": str(kb_index)}, database=tmp_path / "t.db",
                              dtype="fp32", no_auth=True)
    with pytest.raises(ConfigError, match="no served model is named 'nobody'"):
        build_state(settings)


def test_chat_with_rag_prints_sources(tiny_model_dir, kb_index):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "tunery", "chat", f"{tiny_model_dir}+rag:{kb_index}",
                           "--max-tokens", "3", "--temperature", "0"], input="Osprey switch fan part?\n/exit\n",
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "sources: [1] kb.md:1" in done.stdout
