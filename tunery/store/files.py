"""Uploaded-file rows: insert, read, list and delete, each scoped to the acting key.

The bytes live on disk, content-addressed (`tunery.platform.files` writes them); a row only names
its blob by sha256, so two uploads of the same content share one blob.
"""

from __future__ import annotations

import time

import sqlalchemy as sa

from tunery.errors import NotFoundError
from tunery.store.db import Store
from tunery.store.jobs import new_id
from tunery.store.owners import Actor, visible
from tunery.store.pages import newest_first_page
from tunery.store.schema import files


def insert_file(store: Store, actor: Actor, **fields) -> dict:
    row = {"id": new_id("file"), "owner": actor.key_id, "created_at": int(time.time()), **fields}
    store.retrying(lambda conn: conn.execute(files.insert().values(**row)))
    return get_file(store, actor, row["id"])


def get_file(store: Store, actor: Actor, file_id: str) -> dict:
    row = store.retrying(lambda conn: conn.execute(sa.select(files).where(
        files.c.id == file_id, visible(files.c.owner, actor))).mappings().first(), write=False)
    if row is None:
        raise NotFoundError(f"no file with id {file_id!r}", code="file_not_found")
    return dict(row)


def list_files(store: Store, actor: Actor, *, purpose: str | None = None, after: str | None = None,
               limit: int = 10_000) -> tuple[list[dict], bool]:
    """Newest first; `after` is the id of the last file of the previous page."""
    query = sa.select(files).where(visible(files.c.owner, actor))
    if purpose:
        query = query.where(files.c.purpose == purpose)

    missing = NotFoundError(f"no file with id {after!r} (the `after` cursor)", code="file_not_found")
    return newest_first_page(store, files, query, actor, after=after, limit=limit, missing=missing)


def delete_file(store: Store, actor: Actor, file_id: str) -> tuple[dict, bool]:
    """Delete the row; returns it and whether its blob is now unused (the caller removes the blob)."""
    def work(conn) -> tuple[dict, bool]:
        row = conn.execute(sa.select(files).where(files.c.id == file_id,
                                                  visible(files.c.owner, actor))).mappings().first()
        if row is None:
            raise NotFoundError(f"no file with id {file_id!r}", code="file_not_found")
        conn.execute(files.delete().where(files.c.id == file_id))
        others = conn.execute(sa.select(sa.func.count()).select_from(files)
                              .where(files.c.sha256 == row["sha256"])).scalar()
        return dict(row), others == 0

    return store.retrying(work)
