"""A corrupt, truncated, locked or misplaced database is a StoreError naming the real cause."""

from __future__ import annotations

import sqlite3

import pytest

from tunery.errors import StoreError
from tunery.store import create_key, list_keys, open_store


def test_a_truncated_database_is_named_corrupt(tmp_path):
    path = tmp_path / "tunery.db"
    store = open_store(path)
    for i in range(80):
        create_key(store, f"key-{i}")
    store.close()
    for extra in ("-wal", "-shm"):
        (tmp_path / f"tunery.db{extra}").unlink(missing_ok=True)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(StoreError, match="corrupt or truncated"):
        list_keys(open_store(path))


def test_a_file_that_is_no_database_is_named_corrupt(tmp_path):
    path = tmp_path / "tunery.db"
    path.write_bytes(b"\x00\xffnot sqlite" * 500)
    with pytest.raises(StoreError, match="corrupt or truncated"):
        open_store(path)


def test_a_folder_in_place_of_the_database(tmp_path):
    (tmp_path / "tunery.db").mkdir()
    with pytest.raises(StoreError, match="not a regular file"):
        open_store(tmp_path / "tunery.db")


def test_a_locked_database_says_locked_not_cannot_rollback(tmp_path):
    path = tmp_path / "tunery.db"
    store = open_store(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process in a long write
    try:
        with pytest.raises(StoreError) as caught:  # after the busy timeout, no retries
            store.retrying(lambda conn: conn.exec_driver_sql("DELETE FROM api_keys"), for_s=0)
        assert "locked by another process" in caught.value.message
        assert "rollback" not in caught.value.message
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert create_key(store, "after")[0].name == "after"  # the store is usable once the lock is gone
