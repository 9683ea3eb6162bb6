"""Admin routes over the model registry: list, show, promote and roll back (thin: tunery.platform.registry).

Over HTTP a promotion moves the alias (audited with the caller's key id) without running gates:
gating needs task files on the server's disk, which `tunery models promote --tasks` reads there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tunery.platform import registry
from tunery.server.auth import Caller
from tunery.server.state import ServerState
from tunery.store import registry as rows


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(..., min_length=1, max_length=140, description="NAME@N (or NAME@ALIAS) to promote.")
    to: str = Field("production", min_length=1, max_length=64, description="The alias to move.")
    reason: str | None = Field(None, max_length=2000, description="Why (recorded in the audit).")


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str = Field("production", min_length=1, max_length=64)
    reason: str | None = Field(None, max_length=2000)


def list_versions(state: ServerState) -> dict:
    held = rows.aliases(state.store)
    data = [{"id": v.ref, "object": "model_version", "name": v.name, "version": v.version,
             "aliases": sorted(a for (n, a), num in held.items() if n == v.name and num == v.version),
             "base_model": v.base_model, "parent": v.parent, "job_id": v.job_id, "created_at": v.created_at}
            for v in rows.list_versions(state.store)]
    return {"object": "list", "data": data}


def show_version(state: ServerState, ref: str) -> dict:
    info = registry.describe(state.store, ref)
    info.pop("run_dir", None)  # remote clients never see server paths
    return info


def promote(state: ServerState, body: PromoteRequest, caller: Caller) -> dict:
    return registry.promote(state.store, body.version, to=body.to, reason=body.reason, actor=_who(caller))


def rollback(state: ServerState, name: str, body: RollbackRequest, caller: Caller) -> dict:
    return registry.rollback(state.store, name, alias=body.alias, actor=_who(caller), reason=body.reason)


def _who(caller: Caller) -> str:
    return f"key:{caller.key_id}" if caller.key_id else "admin"
