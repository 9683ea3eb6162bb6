"""Every store test runs on SQLite and on PostgreSQL (see tests/db_backends.py)."""

from db_backends import backend, store  # noqa: F401
