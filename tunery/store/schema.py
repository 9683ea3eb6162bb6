"""The tables as SQLAlchemy Core objects, for building queries (the DDL itself is in `migrations.py`).

These describe the schema the newest migration leaves; a test reflects a migrated database on both
backends and checks that every column named here exists there.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

files = sa.Table(
    "files", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("owner", sa.Text),  # the API key id; NULL for the local owner (CLI without a server)
    sa.Column("filename", sa.Text, nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),  # processed | error
    sa.Column("status_details", sa.Text),
    sa.Column("examples", sa.Integer),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("owner", sa.Text),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("training_file", sa.Text, nullable=False),
    sa.Column("validation_file", sa.Text),
    sa.Column("suffix", sa.Text),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("metadata_json", sa.Text),
    sa.Column("method_json", sa.Text, nullable=False),  # {"type": "supervised", "supervised": {...}}
    sa.Column("tunery_json", sa.Text, nullable=False),  # tunery's own training config keys
    sa.Column("hyperparameters_json", sa.Text, nullable=False),  # resolved when the run starts
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error_json", sa.Text),
    sa.Column("fine_tuned_model", sa.Text, unique=True),
    sa.Column("result_files_json", sa.Text, nullable=False),
    sa.Column("trained_tokens", sa.BigInteger),
    sa.Column("estimated_finish", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.BigInteger),
    sa.Column("finished_at", sa.BigInteger),
    sa.Column("run_dir", sa.Text),
    sa.Column("worker_id", sa.Text),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stop_request", sa.Text),  # cancel | pause, seen by the worker at its next heartbeat
    sa.Column("step", sa.Integer),
    sa.Column("total_steps", sa.Integer),
)

job_events = sa.Table(
    "job_events", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("level", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),  # message | metrics
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data_json", sa.Text),
)

job_checkpoints = sa.Table(
    "job_checkpoints", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Text, nullable=False, unique=True),
    sa.Column("job_id", sa.Text, sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("metrics_json", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

workers = sa.Table(
    "workers", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("job_id", sa.Text),
)

model_versions = sa.Table(
    "model_versions", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("run_dir", sa.Text, nullable=False),
    sa.Column("base_model", sa.Text, nullable=False),
    sa.Column("base_weights_sha256", sa.Text),
    sa.Column("dataset_version", sa.Text),
    sa.Column("parent", sa.Text),  # NAME@N whose adapter this version continued
    sa.Column("job_id", sa.Text),
    sa.Column("created_by", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("lineage_json", sa.Text, nullable=False),  # the run's lineage, data files and resolved config
    sa.Column("reports_json", sa.Text, nullable=False),  # eval reports and exports attached later
)

model_aliases = sa.Table(
    "model_aliases", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("alias", sa.Text, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
)

alias_moves = sa.Table(
    "alias_moves", metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("alias", sa.Text, nullable=False),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer, nullable=False),
    sa.Column("actor", sa.Text),
    sa.Column("action", sa.Text, nullable=False),  # promote | rollback | register
    sa.Column("outcome", sa.Text, nullable=False),  # moved | refused (gate) | conflict (another move won)
    sa.Column("reason", sa.Text),
    sa.Column("gate_json", sa.Text),
    sa.Column("created_at", sa.Text, nullable=False),
)

feedback_reviews = sa.Table(
    "feedback_reviews", metadata,
    sa.Column("completion_id", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),  # approved | rejected
    sa.Column("correction", sa.Text),  # the reviewer's edit of the correction, when they made one
    sa.Column("reviewer_key_id", sa.Text),
    sa.Column("reviewed_at", sa.Text, nullable=False),
)

loop_leases = sa.Table(
    "loop_leases", metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("holder", sa.Text, nullable=False),  # host-pid-token of the loop pass
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),  # renewed while the pass runs
)
