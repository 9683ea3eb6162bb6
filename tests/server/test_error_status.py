"""Which HTTP status a library error becomes: the request's fault is a 4xx, the server's own a 5xx."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from tunery.errors import ConfigError, NotFoundError
from tunery.server.errors import install_error_handlers
from tunery.store import open_store


def app_raising(error_source) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom():
        error_source()

    return TestClient(app, raise_server_exceptions=False)


def test_a_failing_database_write_is_a_503_server_error_not_a_400(tmp_path):
    store = open_store(tmp_path / "tunery.db")
    store.execute("DROP TABLE api_keys")  # the database is broken under the server, not by the request
    response = app_raising(lambda: store.execute("INSERT INTO api_keys (id) VALUES (?)", ("k",))).get("/boom")
    assert response.status_code == 503
    body = response.json()["error"]
    assert body["type"] == "server_error" and body["code"] == "store_error"
    assert str(tmp_path) not in body["message"]


def test_request_faults_stay_4xx():
    def bad_option():
        raise ConfigError("--dtype must be auto, bf16 or fp32")

    def missing():
        raise NotFoundError("no such run")

    assert app_raising(bad_option).get("/boom").status_code == 400
    assert app_raising(missing).get("/boom").status_code == 404
