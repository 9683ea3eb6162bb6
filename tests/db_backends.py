"""Store fixtures for both backends: SQLite in the test's TUNERY_HOME, PostgreSQL in a schema of its own.

PostgreSQL comes from TUNERY_TEST_DATABASE_URL (default postgresql://127.0.0.1:5432/test). Where it
cannot be reached its tests skip with the reason, unless TUNERY_REQUIRE_POSTGRES=1 makes that a
failure (CI sets it). Each test gets a fresh schema, dropped afterwards, so runs never share rows.
Import the fixtures into a conftest: `from db_backends import backend, store  # noqa: F401`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

DEFAULT_TEST_URL = "postgresql://127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgresql"]


def postgres_url() -> str:
    return os.environ.get("TUNERY_TEST_DATABASE_URL") or DEFAULT_TEST_URL


def _unavailable(reason: str) -> None:
    if os.environ.get("TUNERY_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required (TUNERY_REQUIRE_POSTGRES=1) but {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


@contextmanager
def postgres_schema() -> Iterator[tuple[str, str]]:
    """A fresh schema in the test database: yields (url, schema); dropped on exit."""
    import sqlalchemy as sa

    from tunery.store.db import database_url

    url = database_url(postgres_url())
    try:
        admin = sa.create_engine(url, connect_args={"connect_timeout": 5})
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:  # any failure to reach it is the reason printed
        _unavailable(f"{postgres_url()}: {str(exc).splitlines()[0]}")
    schema = f"t_{secrets.token_hex(6)}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield url, schema
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@contextmanager
def open_backend_store(backend: str, tmp_path) -> Iterator:
    from tunery.store import open_store

    if backend == "sqlite":
        store = open_store(tmp_path / "tunery.db")
        try:
            yield store
        finally:
            store.close()
        return
    with postgres_schema() as (url, schema):
        store = open_store(url, schema=schema)
        try:
            yield store
        finally:
            store.close()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def store(backend, tmp_path):
    with open_backend_store(backend, tmp_path) as s:
        yield s
