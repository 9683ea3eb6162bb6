"""Admin routes over the model registry: list, show, promote and roll back (thin: tunery.platform.registry).

A promotion over HTTP runs the same gates as `tunery models promote`: on task rows sent in the body
(`tasks`, the rows of a task file) and/or the general-skills tasks (`general`), against the alias's
holder. A failed gate is a 409 with the gate report (numbers and rules, no server paths) and a
refused audit row; `force` with a `reason` promotes anyway, and the audit records both.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunery.platform import registry
from tunery.server.auth import Caller
from tunery.server.state import ServerState
from tunery.store import registry as rows

MAX_TASK_ROWS = 5000


class PromoteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(..., min_length=1, max_length=140, description="NAME@N (or NAME@ALIAS) to promote.")
    to: str = Field("production", min_length=1, max_length=64, description="The alias to move.")
    reason: str | None = Field(None, max_length=2000, description="Why (recorded in the audit).")
    tasks: list[dict] | None = Field(None, min_length=1, max_length=MAX_TASK_ROWS,
                                     description="Task rows (as in a task file) to compare the version with the "
                                                 "alias's holder on before the alias moves.")
    general: bool = Field(False, description="Also compare on the general-skills tasks.")
    gates: list[str] = Field([], max_length=20, description="Gate rules (default no-regression).")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows of each task set.")
    force: bool = Field(False, description="Promote even when a gate fails (needs a reason).")
    weights: Literal["full", "int8", "int4"] | None = Field(
        None, description="Score both versions as `tunery serve --weights W` serves them, through the serving "
                          "engine (needs tasks or general); default: Hugging Face generate on full precision.")


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
    info["history"] = [{**move, "gate": public_report(move["gate"])} for move in info["history"]]
    info["rag_index"] = bool(info.get("rag_index"))  # only whether it retrieves
    return info


def promote(state: ServerState, body: PromoteRequest, caller: Caller) -> dict:
    with tempfile.TemporaryDirectory(prefix="tunery-promote-") as folder:
        tasks = None
        if body.tasks:
            tasks = Path(folder) / "tasks.jsonl"
            tasks.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in body.tasks), encoding="utf-8")
        try:
            result = registry.promote(state.store, body.version, to=body.to, tasks=tasks, gates=body.gates,
                                      general=body.general, out_dir=Path(folder) / "reports", force=body.force,
                                      reason=body.reason, actor=_who(caller), limit=body.limit,
                                      weights=body.weights)
        except registry.GateFailed as exc:
            exc.public_report = public_report(exc.report)
            raise
    return {**result, "gate": public_report(result["gate"])}


def public_report(report: dict | None) -> dict | None:
    """A gate report without the server's paths (task files, report folders)."""
    if report is None:
        return None
    comparisons = [{k: v for k, v in c.items() if k not in ("tasks", "report")} for c in report.get("comparisons", [])]
    return {**report, "comparisons": comparisons}


def rollback(state: ServerState, name: str, body: RollbackRequest, caller: Caller) -> dict:
    return registry.rollback(state.store, name, alias=body.alias, actor=_who(caller), reason=body.reason)


def _who(caller: Caller) -> str:
    return f"key:{caller.key_id}" if caller.key_id else "admin"
