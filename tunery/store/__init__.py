"""SQLite persistence for the server: API keys, the request log and feedback.

Knows nothing about HTTP or models; the server and CLI call these functions.
"""

from tunery.store.db import Store, open_store
from tunery.store.keys import ApiKey, create_key, list_keys, revoke_key, verify_key

__all__ = ["ApiKey", "Store", "create_key", "list_keys", "open_store", "revoke_key", "verify_key"]
