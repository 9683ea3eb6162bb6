"""Model registry rows: versions NAME@N, aliases, and the audit trail of every alias move.

Version numbers are taken inside the inserting transaction (a unique key settles a race); an alias
moves only if it still points where the mover last saw it, so of two promotions at once one wins
and the other is recorded as a conflict. Knows nothing of runs, gates or serving.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import exc

from tunery.errors import NotFoundError, StoreError
from tunery.store.db import Store, utc_now
from tunery.store.schema import alias_moves, model_aliases, model_versions


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    run_dir: str
    base_model: str
    base_weights_sha256: str | None
    dataset_version: str | None
    parent: str | None
    job_id: str | None
    created_by: str | None
    created_at: str
    lineage: dict
    reports: list

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def rag_index(self) -> str | None:
        """The index folder this version answers from when served (attached at registration), if any."""
        return self.lineage.get("rag_index")


def _version(row) -> Version:
    return Version(name=row["name"], version=int(row["version"]), run_dir=row["run_dir"], base_model=row["base_model"],
                   base_weights_sha256=row["base_weights_sha256"], dataset_version=row["dataset_version"],
                   parent=row["parent"], job_id=row["job_id"], created_by=row["created_by"],
                   created_at=row["created_at"], lineage=json.loads(row["lineage_json"]),
                   reports=json.loads(row["reports_json"]))


def insert_version(store: Store, name: str, *, run_dir: str, base_model: str, lineage: dict,
                   base_weights_sha256: str | None = None, dataset_version: str | None = None,
                   parent: str | None = None, job_id: str | None = None, created_by: str | None = None) -> Version:
    """Add NAME@(latest + 1); a concurrent insert of the same number is retried with the next one.

    A lock or a dropped connection is retried as everywhere in the store. If a commit landed but its
    acknowledgement was lost with the connection, the retry finds the version this job already
    registered and returns it instead of adding a second one."""
    def insert(conn) -> dict:
        if job_id is not None:
            existing = conn.execute(sa.select(model_versions).where(
                model_versions.c.name == name, model_versions.c.job_id == job_id)).mappings().first()
            if existing is not None:
                return dict(existing)
        latest = conn.execute(sa.select(sa.func.max(model_versions.c.version))
                              .where(model_versions.c.name == name)).scalar() or 0
        row = {"name": name, "version": latest + 1, "run_dir": run_dir, "base_model": base_model,
               "base_weights_sha256": base_weights_sha256, "dataset_version": dataset_version,
               "parent": parent, "job_id": job_id, "created_by": created_by, "created_at": utc_now(),
               "lineage_json": json.dumps(lineage, sort_keys=True), "reports_json": "[]"}
        conn.execute(model_versions.insert().values(**row))
        return row

    for _ in range(20):
        try:
            return _version(store.retrying(insert))
        except StoreError as error:
            if not isinstance(error.__cause__, exc.IntegrityError):
                raise
    raise NotFoundError(f"could not number a new version of {name}: too many at once", code="registry_busy")


def get_version(store: Store, name: str, version: int) -> Version:
    row = store.retrying(lambda conn: conn.execute(sa.select(model_versions).where(
        model_versions.c.name == name, model_versions.c.version == version)).mappings().first(), write=False)
    if row is None:
        raise NotFoundError(f"no version {name}@{version} in the registry", code="version_not_found",
                            hint="`tunery models list` shows the registered versions")
    return _version(row)


def list_versions(store: Store, name: str | None = None) -> list[Version]:
    query = sa.select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
    if name is not None:
        query = query.where(model_versions.c.name == name)
    return store.retrying(lambda conn: [_version(row) for row in conn.execute(query).mappings()], write=False)


def aliases(store: Store, name: str | None = None) -> dict[tuple[str, str], int]:
    """(name, alias) -> version."""
    query = sa.select(model_aliases)
    if name is not None:
        query = query.where(model_aliases.c.name == name)
    return store.retrying(lambda conn: {(r["name"], r["alias"]): int(r["version"])
                                        for r in conn.execute(query).mappings()}, write=False)


def alias_version(store: Store, name: str, alias: str) -> int | None:
    return aliases(store, name).get((name, alias))


def move_alias(store: Store, name: str, alias: str, to_version: int, *, expected: int | None, actor: str | None,
               action: str, reason: str | None = None, gate: dict | None = None) -> bool:
    """Point `alias` at `to_version` if it still points at `expected`; the attempt is audited either way."""
    audit = {"name": name, "alias": alias, "from_version": expected, "to_version": to_version, "actor": actor,
             "action": action, "reason": reason, "gate_json": json.dumps(gate, sort_keys=True) if gate else None}
    moved = False
    try:
        with store.transaction() as conn:
            if expected is None:  # a second insert of the same alias fails on the primary key
                conn.execute(model_aliases.insert().values(name=name, alias=alias, version=to_version,
                                                           updated_at=utc_now()))
                moved = True
            else:
                moved = conn.execute(model_aliases.update().where(
                    model_aliases.c.name == name, model_aliases.c.alias == alias, model_aliases.c.version == expected)
                    .values(version=to_version, updated_at=utc_now())).rowcount == 1
            if moved:
                conn.execute(alias_moves.insert().values(**audit, outcome="moved", created_at=utc_now()))
    except StoreError as error:
        if not isinstance(error.__cause__, exc.IntegrityError):
            raise
        moved = False
    if not moved:
        with store.transaction() as conn:
            conn.execute(alias_moves.insert().values(**audit, outcome="conflict", created_at=utc_now()))
    return moved


def record_refusal(store: Store, name: str, alias: str, from_version: int | None, to_version: int, *,
                   actor: str | None, action: str, gate: dict | None, reason: str | None = None) -> None:
    with store.transaction() as conn:
        conn.execute(alias_moves.insert().values(
            name=name, alias=alias, from_version=from_version, to_version=to_version, actor=actor, action=action,
            outcome="refused", reason=reason, gate_json=json.dumps(gate, sort_keys=True) if gate else None,
            created_at=utc_now()))


def alias_history(store: Store, name: str, alias: str | None = None) -> list[dict]:
    """Every recorded attempt on NAME's aliases, oldest first."""
    query = sa.select(alias_moves).where(alias_moves.c.name == name).order_by(alias_moves.c.id)
    if alias is not None:
        query = query.where(alias_moves.c.alias == alias)
    rows = store.retrying(lambda conn: [dict(r) for r in conn.execute(query).mappings()], write=False)
    for row in rows:
        row["gate"] = json.loads(row.pop("gate_json")) if row.get("gate_json") else None
    return rows


def attach_report(store: Store, name: str, version: int, report: dict) -> None:
    with store.transaction() as conn:
        row = conn.execute(sa.select(model_versions.c.reports_json).where(
            model_versions.c.name == name, model_versions.c.version == version)).first()
        if row is None:
            raise NotFoundError(f"no version {name}@{version} in the registry", code="version_not_found")
        reports = json.loads(row[0]) + [report]
        conn.execute(model_versions.update().where(model_versions.c.name == name, model_versions.c.version == version)
                     .values(reports_json=json.dumps(reports, sort_keys=True)))
