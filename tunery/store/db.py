"""The database connection on SQLAlchemy Core: SQLite under TUNERY_HOME, or PostgreSQL (psycopg 3).

`open_store()` picks the backend (TUNERY_DATABASE_URL, else TUNERY_HOME/tunery.db), applies the
numbered migrations and hands back a `Store`. Writes run in `store.transaction()`: `BEGIN IMMEDIATE`
on SQLite (one writer at a time, waiting up to the busy timeout), a normal transaction on
PostgreSQL. `store.retrying(fn)` reruns a unit of work when the database was locked, restarted or
briefly unreachable. Knows no table but `schema_migrations`; the tables live in `schema.py`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection

from tunery.errors import StoreError
from tunery.paths import database_path
from tunery.store.errors import store_error

log = logging.getLogger("tunery.store")
BUSY_TIMEOUT_MS = 5000
RETRY_FOR_S = 60.0  # how long a unit of work keeps retrying through a lock or a database restart
T = TypeVar("T")


def utc_now() -> str:
    """ISO-8601 UTC timestamp with microseconds; sorts lexically in time order."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def database_url(path: Path | str | None = None) -> str:
    """The SQLAlchemy URL: `path` (a file or a URL), else TUNERY_DATABASE_URL, else TUNERY_HOME/tunery.db."""
    value = str(path) if path is not None else os.environ.get("TUNERY_DATABASE_URL") or ""
    if not value:
        return f"sqlite:///{database_path()}"
    if value.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + value.split("://", 1)[1]
    if "://" in value:
        return value
    return f"sqlite:///{Path(value).expanduser()}"


def redact_url(url: str) -> str:
    """A URL fit for messages: the password, if any, replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def is_transient(error: BaseException) -> bool:
    """A database error worth retrying: a lock, a lost connection, a server restarting."""
    if isinstance(error, exc.DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, exc.OperationalError | exc.InterfaceError):
        return False
    text = str(error.orig).lower()
    return any(s in text for s in ("locked", "busy", "connection", "terminat", "shutting down", "server closed",
                                   "starting up", "recovery mode", "timeout"))


class Store:
    """A SQLAlchemy engine plus the few habits every caller needs (transactions, retries, migrations).

    The API the rest of tunery uses:
      store.transaction()          context manager -> Connection; commits, or rolls back on error
      store.read()                 context manager -> Connection for reads (no write lock)
      store.retrying(fn)           fn(conn) in a transaction, rerun on transient errors
      store.retrying(fn, write=False)  the same for reads
      store.execute(sql, params)   one raw write statement (`?` placeholders); returns rows changed
      store.query(sql, params)     rows as mappings; store.query_one(...) the first or None
      store.dialect                "sqlite" or "postgresql"
    SQLAlchemy Core statements over the tables in `tunery.store.schema` go to `conn.execute(...)`.
    """

    def __init__(self, url: str, *, schema: str | None = None, migrate: bool = True):
        self.url = url
        self.schema = schema
        try:
            self.engine = _create_engine(url, schema)
            self.dialect = self.engine.dialect.name
            if self.dialect == "sqlite":
                path = self.engine.url.database
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                    if Path(path).exists() and not Path(path).is_file():  # a folder, or a link to /dev/null
                        raise StoreError(f"the database {path} is not a regular file", hint="move it aside")
                    make_owner_only(Path(path))
            with self.engine.connect():
                pass
        except (exc.SQLAlchemyError, OSError) as error:
            raise store_error(error, redact_url(url), opening=True) from None
        if migrate:
            from tunery.store.migrations import migrate as apply_migrations

            apply_migrations(self)

    @property
    def path(self) -> Path | None:
        """The SQLite file (None on PostgreSQL)."""
        database = self.engine.url.database
        return Path(database) if self.dialect == "sqlite" and database else None

    @property
    def schema_version(self) -> int:
        row = self.query_one("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"] or 0) if row else 0

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction; SQLite takes the write lock at BEGIN so read-then-write is atomic.
        Every database failure leaves as a StoreError (prefer `retrying`, which rides out a lock)."""
        try:
            with self._connection(write=True) as conn:
                yield conn
        except exc.SQLAlchemyError as error:
            raise store_error(error) from error

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads (no write lock); failures leave as StoreErrors. Prefer
        `retrying(work, write=False)`, which rides out a lock or a dropped connection."""
        try:
            with self._connection(write=False) as conn:
                yield conn
        except exc.SQLAlchemyError as error:
            raise store_error(error) from error

    @contextmanager
    def _connection(self, *, write: bool) -> Iterator[Connection]:
        """The raw connection (SQLAlchemy's errors unchanged, for `retrying` to tell a lock from a fault)."""
        with self.engine.connect() as conn:
            if not write:
                yield conn
                return
            conn.execution_options(tunery_write=True)
            with conn.begin():
                yield conn

    def retrying(self, work: Callable[[Connection], T], *, for_s: float | None = None, write: bool = True) -> T:
        """Run `work(conn)` in a transaction (a read-only one with write=False); a lock or a dropped
        connection reruns it, with back-off, for up to `for_s` seconds (default RETRY_FOR_S)."""
        deadline, delay = time.monotonic() + (RETRY_FOR_S if for_s is None else for_s), 0.05
        while True:
            try:
                with self._connection(write=write) as conn:
                    return work(conn)
            except exc.SQLAlchemyError as error:
                if not is_transient(error):
                    raise store_error(error) from error
                if time.monotonic() > deadline:
                    raise store_error(error) from None
                log.warning("database busy or unreachable (%s); retrying in %.2f s", type(error).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def execute(self, sql: str, params: tuple | Mapping = ()) -> int:
        """Run one write statement in a transaction; returns the number of rows changed."""
        return self.retrying(lambda conn: conn.exec_driver_sql(self._driver_sql(sql), _params(params)).rowcount)

    def query(self, sql: str, params: tuple | Mapping = ()) -> list[Record]:
        return self.retrying(lambda conn: [Record(row) for row in conn.exec_driver_sql(
            self._driver_sql(sql), _params(params)).mappings()], write=False)

    def query_one(self, sql: str, params: tuple | Mapping = ()) -> Record | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def _driver_sql(self, sql: str) -> str:
        # Raw SQL is written with `?`; psycopg wants `%s` (and a literal % doubled).
        if self.dialect == "postgresql":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def close(self) -> None:
        self.engine.dispose()


class Record(dict):
    """A result row: by column name (`row["id"]`) or, as sqlite3.Row allowed, by position (`row[0]`)."""

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.values())[key]
        return super().__getitem__(key)


def _params(params: tuple | Mapping) -> Any:
    return params if isinstance(params, Mapping) else tuple(params)


def make_owner_only(path: Path) -> None:
    """The SQLite file holds every prompt and answer: 0600 (SQLite gives its -wal and -shm the same mode)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o600)
        except PermissionError:  # another user's file: opening it decides
            pass


def _create_engine(url: str, schema: str | None) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
        _sqlite_habits(engine)
        return engine
    connect_args = {"connect_timeout": 10, "application_name": f"tunery-{schema}" if schema else "tunery"}
    if schema:
        connect_args["options"] = f"-csearch_path={schema}"
    return sa.create_engine(url, pool_pre_ping=True, pool_recycle=1800, connect_args=connect_args)


def _sqlite_habits(engine: sa.Engine) -> None:
    """WAL, a busy timeout, foreign keys; and transactions begun by us (pysqlite's own are too lazy)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("tunery_write") else "BEGIN")


def open_store(location: Path | str | None = None, *, schema: str | None = None) -> Store:
    """Open (creating and migrating) the store: a SQLite file or URL, TUNERY_DATABASE_URL, or TUNERY_HOME/tunery.db."""
    return Store(database_url(location), schema=schema)
