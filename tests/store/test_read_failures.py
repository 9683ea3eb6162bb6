"""A database that is locked or goes away during a read is a StoreError, which the server answers
with 503 and Retry-After; SQLAlchemy's own error (a 500) never leaves the store.

SQLite: another process holds the database exclusively past the busy timeout. PostgreSQL: the
server ends the connection as the statement starts (what a restart does to every client).
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from db_backends import postgres_url
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tunery.errors import StoreError
from tunery.server.errors import STORE_RETRY_AFTER_S, install_error_handlers
from tunery.store import db as store_db
from tunery.store.db import database_url
from tunery.store.registry import list_versions


@contextmanager
def failing_reads(store, *, times: int | None = None):
    """Reads on `store` fail as a locked or vanished database makes them (`times` statements, or all)."""
    if store.dialect == "sqlite":
        assert times is None
        store.engine.dispose()  # the pool's idle connections would keep the exclusive lock from being taken
        holder = sqlite3.connect(store.path, isolation_level=None)
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        holder.execute("SELECT COUNT(*) FROM api_keys").fetchall()  # takes the lock: readers now wait, then fail
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    admin, left = sa.create_engine(database_url(postgres_url())), [times]

    def end_connection(conn, cursor, statement, parameters, context, executemany):
        if left[0] is not None:
            if left[0] == 0:
                return
            left[0] -= 1
        pid = conn.connection.dbapi_connection.info.backend_pid
        with admin.begin() as other:  # waits until the server has ended it
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)}, 10000)")

    sa.event.listen(store.engine, "before_cursor_execute", end_connection)
    try:
        yield
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", end_connection)
        admin.dispose()


def test_a_read_connection_fails_as_a_store_error(store):
    with failing_reads(store), pytest.raises(StoreError) as caught:
        with store.read() as conn:
            conn.exec_driver_sql("SELECT COUNT(*) FROM api_keys").all()
    assert "failed" in caught.value.message


def test_a_read_past_its_retries_is_a_store_error(store, monkeypatch):
    monkeypatch.setattr(store_db, "RETRY_FOR_S", 0.0)  # give up after the first failure
    with failing_reads(store), pytest.raises(StoreError):
        list_versions(store)


def test_a_read_rides_out_a_dropped_connection(store):
    if store.dialect == "sqlite":
        pytest.skip("a lock that clears later would need a timer; PostgreSQL's dropped connection does not")
    with failing_reads(store, times=1):
        assert list_versions(store) == []  # the first try's connection was ended; the retry read


def test_the_server_answers_a_failed_read_with_503_and_retry_after(store, monkeypatch):
    monkeypatch.setattr(store_db, "RETRY_FOR_S", 0.0)
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/versions")
    def versions():
        return [v.ref for v in list_versions(store)]

    client = TestClient(app, raise_server_exceptions=False)
    assert client.get("/versions").status_code == 200
    with failing_reads(store):
        response = client.get("/versions")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(STORE_RETRY_AFTER_S)
    error = response.json()["error"]
    assert error["code"] == "store_error" and error["type"] == "server_error"
    assert "SELECT" not in error["message"] and "model_versions" not in error["message"]
