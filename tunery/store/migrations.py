"""Numbered schema migrations, applied in order and recorded in `schema_migrations`.

Each migration is portable SQL; the few words the two backends spell differently are written as
tokens (`{serial}`: an auto-increment primary key; `{float}`). Append only: never edit a migration
that has shipped (migration 1 is byte for byte the schema the first SQLite store created, so those
databases migrate forward untouched). A database newer than this code is refused, not guessed at.
Two processes starting at once migrate once: SQLite's write lock or a PostgreSQL advisory lock
serialises them, and the version is read again under the lock.
"""

from __future__ import annotations

from tunery.errors import StoreError
from tunery.store.db import Store, redact_url, utc_now

MIGRATION_LOCK_ID = 7_215_001  # any constant: the PostgreSQL advisory lock that serialises migrators

TOKENS = {
    "sqlite": {"{serial}": "INTEGER PRIMARY KEY AUTOINCREMENT", "{float}": "REAL"},
    "postgresql": {"{serial}": "BIGSERIAL PRIMARY KEY", "{float}": "DOUBLE PRECISION"},
}

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
        id {serial},
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
    # 3: uploaded files, fine-tuning jobs (the queue: status, lease, worker), their events and
    # checkpoints, and the workers seen. Times are unix seconds, as in OpenAI's objects.
    """
    CREATE TABLE files (
        seq {serial},
        id TEXT NOT NULL UNIQUE,
        owner TEXT,
        filename TEXT NOT NULL,
        purpose TEXT NOT NULL,
        bytes BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        status TEXT NOT NULL,
        status_details TEXT,
        examples INTEGER,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX files_owner_seq ON files(owner, seq);
    CREATE INDEX files_sha256 ON files(sha256);
    CREATE TABLE jobs (
        seq {serial},
        id TEXT NOT NULL UNIQUE,
        owner TEXT,
        model TEXT NOT NULL,
        training_file TEXT NOT NULL,
        validation_file TEXT,
        suffix TEXT,
        seed BIGINT NOT NULL,
        metadata_json TEXT,
        method_json TEXT NOT NULL,
        tunery_json TEXT NOT NULL,
        hyperparameters_json TEXT NOT NULL,
        status TEXT NOT NULL,
        error_json TEXT,
        fine_tuned_model TEXT UNIQUE,
        result_files_json TEXT NOT NULL,
        trained_tokens BIGINT,
        estimated_finish BIGINT,
        created_at BIGINT NOT NULL,
        started_at BIGINT,
        finished_at BIGINT,
        run_dir TEXT,
        worker_id TEXT,
        heartbeat_at {float},
        lease_expires_at {float},
        attempts INTEGER NOT NULL DEFAULT 0,
        stop_request TEXT,
        step INTEGER,
        total_steps INTEGER
    );
    CREATE INDEX jobs_status_seq ON jobs(status, seq);
    CREATE INDEX jobs_owner_seq ON jobs(owner, seq);
    CREATE TABLE job_events (
        seq {serial},
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        created_at BIGINT NOT NULL,
        level TEXT NOT NULL,
        type TEXT NOT NULL,
        message TEXT NOT NULL,
        data_json TEXT
    );
    CREATE INDEX job_events_job_seq ON job_events(job_id, seq);
    CREATE TABLE job_checkpoints (
        seq {serial},
        id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        metrics_json TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        UNIQUE (job_id, step)
    );
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at BIGINT NOT NULL,
        last_seen {float} NOT NULL,
        job_id TEXT
    );
    """,
    # 4: the model registry: versions NAME@N with their lineage, aliases (production, candidate, any
    # name) and every attempt to move an alias (who, when, from, to, outcome, gate report).
    """
    CREATE TABLE model_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        run_dir TEXT NOT NULL,
        base_model TEXT NOT NULL,
        base_weights_sha256 TEXT,
        dataset_version TEXT,
        parent TEXT,
        job_id TEXT,
        created_by TEXT,
        created_at TEXT NOT NULL,
        lineage_json TEXT NOT NULL,
        reports_json TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE model_aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (name, alias)
    );
    CREATE TABLE alias_moves (
        id {serial},
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        from_version INTEGER,
        to_version INTEGER NOT NULL,
        actor TEXT,
        action TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT,
        gate_json TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX alias_moves_name ON alias_moves(name, alias, id)
    """,
    # 5: reviews of feedback before it trains (the console's review queue): approved, with an optional
    # edited correction, or rejected; feedback without a review is pending.
    """
    CREATE TABLE feedback_reviews (
        completion_id TEXT PRIMARY KEY REFERENCES completions(id) ON DELETE CASCADE,
        status TEXT NOT NULL,
        correction TEXT,
        reviewer_key_id TEXT,
        reviewed_at TEXT NOT NULL
    );
    """,
    # 6: loop leases: the one loop pass running for a model NAME, on whichever machine, until its lease
    # runs out (a holder that died stops renewing, and the next loop takes the name over).
    """
    CREATE TABLE loop_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        acquired_at {float} NOT NULL,
        expires_at {float} NOT NULL
    );
    """,
]


def statements(migration: str, dialect: str) -> list[str]:
    """The migration's statements with the backend's spelling of each token."""
    for token, spelling in TOKENS[dialect].items():
        migration = migration.replace(token, spelling)
    return [s.strip() for s in migration.split(";") if s.strip()]


def migrate(store: Store) -> int:
    """Apply every migration newer than the database, each in its own transaction; returns the version."""
    while True:
        with store.transaction() as conn:
            if store.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS schema_migrations "
                                 "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)")
            current = conn.exec_driver_sql("SELECT MAX(version) FROM schema_migrations").scalar() or 0
            if current > len(MIGRATIONS):
                raise StoreError(
                    f"the database {redact_url(store.url)} has schema version {current}, newer than this tunery "
                    f"({len(MIGRATIONS)})", hint="upgrade tunery, or point TUNERY_HOME at another folder")
            if current == len(MIGRATIONS):
                return current
            for statement in statements(MIGRATIONS[current], store.dialect):
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql(f"INSERT INTO schema_migrations (version, applied_at) VALUES ({current + 1}, "
                                 f"'{utc_now()}')")
