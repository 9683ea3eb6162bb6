"""Persistence on SQLite (the embedded default) or PostgreSQL: keys, request log, feedback, files, jobs.

Knows nothing about HTTP or models; the server, the platform services and the CLI call these.
`open_store()` picks the backend; see `tunery.store.db.Store` for the API.
"""

from tunery.store.db import Store, open_store
from tunery.store.keys import ApiKey, create_key, list_keys, revoke_key, verify_key

__all__ = ["ApiKey", "Store", "create_key", "list_keys", "open_store", "revoke_key", "verify_key"]
