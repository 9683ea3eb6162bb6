"""A real uvicorn server on a free loopback port over the tiny model, with keys and one adapter."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.inference.conftest import one_torch_thread, save_lora_run  # noqa: F401 (autouse fixture)


@dataclass
class LiveServer:
    url: str
    app: object
    state: object
    admin_key: str
    user_key: str
    base: str

    def client(self, key: str | None = None, **kwargs):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=key or self.user_key, max_retries=0, timeout=60, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(settings):
    import uvicorn

    from tunery.server.app import create_app

    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        thread.join(0.02)
    return app, server, thread


@pytest.fixture(scope="session")
def adapter_run(tiny_model_dir, tmp_path_factory) -> Path:
    return save_lora_run(tiny_model_dir, tmp_path_factory.mktemp("runs") / "support-v1", seed=1)


@pytest.fixture(scope="module")
def live(tiny_model_dir, adapter_run, tmp_path_factory):
    from tunery.server.settings import ServerSettings
    from tunery.store import create_key, open_store

    db = tmp_path_factory.mktemp("db") / "tunery.db"
    store = open_store(db)
    _, admin_key = create_key(store, "admin", admin=True)
    _, user_key = create_key(store, "user")
    store.close()
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", adapters={"support": str(adapter_run)},
                              database=db, port=free_port(), dtype="fp32", max_n=4, max_stop=2,
                              max_body_bytes=64_000, default_max_tokens=16)
    app, server, thread = start_server(settings)
    yield LiveServer(url=f"http://127.0.0.1:{settings.port}", app=app, state=app.state.tunery,
                     admin_key=admin_key, user_key=user_key, base="tiny")
    server.should_exit = True
    thread.join(30)
