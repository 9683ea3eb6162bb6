"""The SQLite connection: WAL mode, a busy timeout, foreign keys, and numbered migrations.

Migrations are plain SQL strings applied in order and recorded in `schema_migrations`; a
database newer than this code is refused rather than guessed at.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from tunery.errors import StoreError
from tunery.paths import database_path

BUSY_TIMEOUT_MS = 5000

# Append only: never edit a migration that has shipped.
MIGRATIONS: list[str] = [
    # 1: API keys (only a hash is stored), the request log and feedback on logged completions.
    """
    CREATE TABLE api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        key_sha256 TEXT NOT NULL,
        admin INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        revoked_at TEXT
    );
    CREATE TABLE completions (
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL,
        key_id TEXT,
        model TEXT NOT NULL,
        kind TEXT NOT NULL,
        messages_json TEXT NOT NULL,
        outputs_json TEXT NOT NULL,
        finish_reason TEXT,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL
    );
    CREATE INDEX completions_created_at ON completions(created_at);
    CREATE TABLE feedback (
        completion_id TEXT PRIMARY KEY REFERENCES completions(id) ON DELETE CASCADE,
        rating INTEGER NOT NULL CHECK (rating IN (1, -1)),
        correction TEXT,
        comment TEXT,
        key_id TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
    # 2: who did what to whose object (admin actions on other keys' objects, key management).
    """
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor_key_id TEXT,
        action TEXT NOT NULL,
        object_type TEXT NOT NULL,
        object_id TEXT NOT NULL,
        owner_key_id TEXT,
        detail_json TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX completions_key_id ON completions(key_id);
    """,
]


def utc_now() -> str:
    """ISO-8601 UTC timestamp with seconds; sorts lexically in time order."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """One SQLite connection shared by threads behind a lock (writes are short)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path), timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False, isolation_level=None
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the database {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
        self.migrate()

    @property
    def schema_version(self) -> int:
        row = self.query_one("SELECT MAX(version) AS v FROM schema_migrations")
        return int(row["v"] or 0)

    def migrate(self) -> None:
        """Apply every migration newer than the database, each in its own transaction."""
        with self.transaction() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
            )
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise StoreError(
                f"the database {self.path} has schema version {current}, newer than this tunery ({len(MIGRATIONS)})",
                hint="upgrade tunery, or point TUNERY_HOME at another folder",
            )
        for version in range(current + 1, len(MIGRATIONS) + 1):
            with self.transaction() as conn:
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (version, utc_now()))

    @contextmanager
    def transaction(self):
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def execute(self, sql: str, params: tuple = ()) -> int:
        """Run one write statement in a transaction; returns the number of rows changed."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: tuple = ()) -> sqlite3.Row | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def open_store(path: Path | None = None) -> Store:
    """Open (creating and migrating) the store at `path`, default `TUNERY_HOME/tunery.db`."""
    return Store(path or database_path())
