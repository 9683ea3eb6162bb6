"""Owner-only by default: TUNERY_HOME 0700; the database, uploads, predictions and exports 0600."""

from __future__ import annotations

import stat

from tunery.paths import tunery_home
from tunery.platform.files import blob_path, save_upload
from tunery.safeio import open_private
from tunery.store import open_store
from tunery.store.owners import LOCAL_OWNER


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_home_and_its_database_are_owner_only(tmp_path, monkeypatch):
    home = tmp_path / "fresh" / "home"
    monkeypatch.setenv("TUNERY_HOME", str(home))
    assert tunery_home() == home and mode(home) == 0o700
    store = open_store(str(home / "tunery.db"))
    try:
        file = save_upload(store, LOCAL_OWNER, [b'{"messages": [{"role": "user", "content": "hi"}, '
                                                b'{"role": "assistant", "content": "hello"}]}\n'],
                           filename="t.jsonl", purpose="fine-tune")
        assert mode(home / "tunery.db") == 0o600
        wal = home / "tunery.db-wal"
        assert not wal.exists() or mode(wal) == 0o600
        assert mode(blob_path(file["sha256"])) == 0o600  # uploaded training data
    finally:
        store.close()


def test_an_existing_world_readable_database_is_made_owner_only(tmp_path):
    path = tmp_path / "old.db"
    open_store(str(path)).close()
    path.chmod(0o644)  # what earlier versions left
    open_store(str(path)).close()
    assert mode(path) == 0o600


def test_open_private_creates_and_tightens(tmp_path):
    existing = tmp_path / "predictions.jsonl"
    existing.write_text("old")
    existing.chmod(0o644)
    with open_private(existing, "w", encoding="utf-8") as handle:
        handle.write("new")
    with open_private(tmp_path / "job.log", "ab") as handle:
        handle.write(b"x")
    assert existing.read_text() == "new" and mode(existing) == 0o600 and mode(tmp_path / "job.log") == 0o600
