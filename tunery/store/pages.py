"""Keyset pages over a table with `seq` (insertion order) and `owner` columns: newest first, continued
after the id of the last row of the previous page, which must be one the actor may see.

Knows the two columns every listed table has; nothing about what a row means.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tunery.errors import NotFoundError
from tunery.store.db import Store
from tunery.store.owners import Actor, visible


def newest_first_page(store: Store, table: sa.Table, query: sa.Select, actor: Actor, *, after: str | None,
                      limit: int, missing: NotFoundError) -> tuple[list[dict], bool]:
    """Up to `limit` rows of `query` (already filtered to what `actor` may see), newest first, and
    whether more follow; `missing` is raised when `after` names no row the actor may see."""
    def read(conn: Connection) -> list[dict]:
        page = query
        if after:
            cursor = conn.execute(sa.select(table.c.seq).where(table.c.id == after,
                                                               visible(table.c.owner, actor))).scalar()
            if cursor is None:
                raise missing
            page = page.where(table.c.seq < cursor)
        return [dict(r) for r in conn.execute(page.order_by(table.c.seq.desc()).limit(limit + 1)).mappings()]

    rows = store.retrying(read, write=False)
    return rows[:limit], len(rows) > limit
