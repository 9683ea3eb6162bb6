"""The model registry as a service: runs become versions NAME@N, aliases move only past the gates.

`register_run` reads a finished run directory's lineage; `resolve_version` turns `NAME` (its
production version), `NAME@N` or `NAME@ALIAS` into a version; `promote` compares the version with
the alias's holder on the user's tasks (the existing compare and gates) and refuses when a gate
fails unless forced with a reason; `rollback` puts the previous holder back. Every attempt is an
audit row (tunery.store.registry). Serving and the loop call these functions.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from tunery.config import read_yaml_mapping
from tunery.errors import ConfigError, NotFoundError, TuneryError
from tunery.evaluation.gates import parse_gate
from tunery.rag.manifest import read_manifest
from tunery.safeio import read_text
from tunery.store import registry as rows
from tunery.store.db import Store
from tunery.store.registry import Version
from tunery.store.stats import feedback_counts

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # fullmatch: `$` would pass "name\n"
DEFAULT_ALIAS = "production"
DEFAULT_GATES = ("no-regression",)


class GateFailed(TuneryError):
    """A promotion's gate failed: the alias did not move (exit 3, like `tunery compare`)."""

    code = "gate_failed"
    exit_code = 3
    report: dict  # the gate report (set where raised)
    public_report: dict | None = None  # the same without server paths, set by the HTTP route


class PromotionConflict(TuneryError):
    """Another move of the same alias won the race; this one is recorded as a conflict."""

    code = "promotion_conflict"
    exit_code = 1


def parse_ref(text: str) -> tuple[str, str | None]:
    """`NAME` or `NAME@N` / `NAME@ALIAS` -> (name, selector or None)."""
    name, at, selector = str(text).strip().partition("@")
    if not NAME.fullmatch(name) or ((at or selector) and not NAME.fullmatch(selector)):
        raise ConfigError(f"{text!r} is not a registry reference", code="invalid_model_ref",
                          hint="write NAME, NAME@N or NAME@ALIAS (letters, digits, ._-)")
    return name, selector or None


def resolve_version(store: Store, text: str, default_alias: str = DEFAULT_ALIAS) -> Version:
    """The version a reference means: NAME -> NAME@production, NAME@3, NAME@candidate."""
    name, selector = parse_ref(text)
    selector = selector or default_alias
    quoted = repr(text)  # the reference as given, quoted: a server takes its clients' own values out of messages
    if selector.isdigit():
        missing = NotFoundError(f"no version {quoted} in the registry", code="version_not_found",
                                hint="`tunery models list` shows the registered versions")
        if len(selector) > 18:  # past 2**63 no version exists, and the database cannot take the number
            raise missing
        try:
            return rows.get_version(store, name, int(selector))
        except NotFoundError:
            raise missing from None
    version = rows.alias_version(store, name, selector)
    if version is None:
        known = rows.list_versions(store, name)
        raise NotFoundError(f"{quoted} points at no version (alias {selector!r})" if known
                            else f"{quoted} names no model in the registry",
                            code="version_not_found", hint="`tunery models list` shows versions and aliases")
    return rows.get_version(store, name, version)


def register_run(store: Store, run_dir: str | Path, name: str, *, job_id: str | None = None,
                 created_by: str | None = None, alias: str | None = None,
                 rag_index: str | Path | None = None) -> Version:
    """Record a completed run as NAME@N+1 with its lineage; optionally point `alias` at it.

    `rag_index`: an index folder (`tunery rag index`) the version answers from wherever it is
    served by name, as `RUN+rag:INDEX_DIR` would; it is checked to be an index now, and against the
    served model's tokenizer when a server first loads the version.
    """
    if not NAME.fullmatch(name):
        raise ConfigError(f"model name {name!r} must be letters, digits and ._- (at most 64)", code="invalid_model_ref")
    if alias is not None and not NAME.fullmatch(alias):
        raise ConfigError(f"alias {alias!r} must be letters, digits and ._-", code="invalid_model_ref")
    run = Path(run_dir).expanduser().resolve()
    info = _read_run(run)
    lineage = info.get("lineage") or {}
    if not isinstance(lineage, dict):
        raise ConfigError(f"{run / 'run.json'}: field 'lineage' must be an object, got {type(lineage).__name__}",
                          code="not_a_run", hint="pass the folder `tunery train` wrote")
    lineage = dict(lineage)
    lineage.update(run_name=info.get("name"), method=info.get("method"), objective=info.get("objective", "sft"),
                   metrics=info.get("metrics") or {}, data_files=_data_files(run), config=_config_text(run))
    if rag_index is not None:
        index = Path(rag_index).expanduser().resolve()
        read_manifest(index)  # a missing, foreign or outdated index fails here, not at the first request
        lineage["rag_index"] = str(index)
    parent = _parent_of(store, lineage.get("init_from"))
    version = rows.insert_version(store, name, run_dir=str(run), base_model=str(lineage.get("base_model") or
                                                                             info.get("base_model")),
                                  base_weights_sha256=lineage.get("base_weights_sha256"),
                                  dataset_version=lineage.get("dataset_version"), parent=parent, job_id=job_id,
                                  created_by=created_by, lineage=lineage)
    if alias:
        rows.move_alias(store, name, alias, version.version, expected=rows.alias_version(store, name, alias),
                        actor=created_by, action="register")
    return version


def _read_run(run: Path) -> dict:
    path = run / "run.json"
    if not path.is_file():
        raise ConfigError(f"{run} is not a run directory (no run.json)", code="not_a_run",
                          hint="pass the folder `tunery train` wrote")
    try:
        info = json.loads(read_text(path, what="run.json", error=ConfigError))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})", code="not_a_run",
                          hint="pass the folder `tunery train` wrote") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{path}: a run.json must be a JSON object, got {type(info).__name__}", code="not_a_run",
                          hint="pass the folder `tunery train` wrote")
    if info.get("status") != "completed" or not ((run / "adapter").is_dir() or (run / "model").is_dir()):
        raise ConfigError(f"run {run} has not completed (status {info.get('status')!r})", code="run_not_completed",
                          hint="only a completed run with an adapter/ or model/ can be registered")
    return info


def _data_files(run: Path) -> dict[str, dict]:
    """The training and validation files the run's config names, with their sha256 (when still there)."""
    config_path = run / "config.yaml"
    data = (read_yaml_mapping(config_path).get("data") or {}) if config_path.is_file() else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{config_path}: field 'data' must be a mapping, got {type(data).__name__}")
    files = {}
    for key in ("train", "validation"):
        if data.get(key):
            if not isinstance(data[key], str):
                raise ConfigError(f"{config_path}: field 'data.{key}' must be a file path, got {type(data[key]).__name__}")
            path = Path(data[key])
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            files[key] = {"path": str(path), "sha256": digest}
    return files


def _config_text(run: Path) -> str | None:
    path = run / "config.yaml"
    return read_text(path, what="config.yaml", error=ConfigError) if path.is_file() else None


def _parent_of(store: Store, init_from: object) -> str | None:
    if not init_from or not isinstance(init_from, str):
        return None
    target = str(Path(init_from).expanduser().resolve())
    for version in rows.list_versions(store):
        if version.run_dir == target:
            return version.ref
    return None


def promote(store: Store, ref: str, *, to: str = DEFAULT_ALIAS, tasks: str | Path | None = None,
            gates: list[str] | tuple[str, ...] = (), general: bool = False, out_dir: str | Path | None = None,
            force: bool = False, reason: str | None = None, actor: str | None = None, limit: int | None = None,
            gate_report: dict | None = None, weights: str | None = None) -> dict:
    """Move `to` to the version `ref` names, after the gates pass on `tasks` (against the alias's holder).

    `gate_report`: gates already passed by the caller (the loop's), recorded in the audit as they are.
    `weights`: score both versions as `tunery serve --weights W` serves them (full, int8 or int4,
    through the serving engine); the gate report in the audit records the weights either way."""
    if force and not (reason or "").strip():
        raise ConfigError("--force needs --reason: the audit records why a gate was overridden", code="reason_required")
    if weights is not None:
        from tunery.inference.quant import check_weight_format  # loads torch: only when weights are asked for

        check_weight_format(weights)
        if tasks is None and not general:  # nothing would be scored with them
            raise ConfigError("--weights chooses what the gates score, and no gate runs without tasks",
                              code="weights_without_tasks",
                              hint="give a task file (--tasks; over HTTP, task rows) or --general as well")
    if not NAME.fullmatch(to):
        raise ConfigError(f"alias {to!r} must be letters, digits and ._-", code="invalid_model_ref")
    for rule in gates:
        parse_gate(rule)  # a malformed rule fails now, not after both versions have answered every task
    if gates and tasks is None and not general:  # else the rule would be dropped and the alias move ungated
        raise ConfigError("a gate rule needs tasks to be measured on", code="gate_without_tasks",
                          hint="give a task file (--tasks; over HTTP, task rows) or the general-skills set (--general)")
    version = resolve_version(store, ref)
    current = rows.alias_version(store, version.name, to)
    if current == version.version:
        raise ConfigError(f"{version.name}@{to} is already {version.ref}", code="already_promoted")
    if gate_report is not None and gate_report.get("baseline") != f"{version.name}@{current}":
        rows.record_refusal(store, version.name, to, current, version.version, actor=actor, action="promote",
                            gate=gate_report, reason=f"gated against {gate_report.get('baseline')}, which no longer "
                            f"holds {to}")
        raise PromotionConflict(f"{version.name}@{to} moved while {version.ref} was being gated against "
                                f"{gate_report.get('baseline')}", hint="run the loop again")
    if current is not None and (tasks is not None or general):
        holder = rows.get_version(store, version.name, current)
        if holder.base_model != version.base_model:
            raise ConfigError(f"{version.ref} was trained on {version.base_model}, {holder.ref} on "
                              f"{holder.base_model}: a server cannot swap one for the other", code="base_mismatch")
        gate_report = run_gates(holder, version, tasks=tasks, gates=list(gates) or list(DEFAULT_GATES),
                                general=general, out_dir=out_dir, limit=limit, weights=weights)
        if not gate_report["passed"] and not force:
            rows.record_refusal(store, version.name, to, current, version.version, actor=actor, action="promote",
                                gate=gate_report)
            failed = "; ".join(f"{g['rule']}: {g['detail']}" for g in gate_report["gates"] if not g["passed"])
            error = GateFailed(f"{version.ref} did not pass the gates against {holder.ref}: {failed}",
                               hint="see the report; --force --reason TEXT promotes anyway (audited)")
            error.report = gate_report
            raise error
    moved = rows.move_alias(store, version.name, to, version.version, expected=current, actor=actor,
                            action="promote", reason=reason, gate=gate_report)
    if not moved:
        raise PromotionConflict(f"{version.name}@{to} moved while {version.ref} was being checked",
                                hint="look at `tunery models show` and promote again")
    return {"name": version.name, "alias": to, "from": current, "to": version.version, "gate": gate_report}


def run_gates(holder: Version, candidate: Version, *, tasks, gates: list[str], general: bool, out_dir,
              limit: int | None = None, max_new_tokens: int | None = None, weights: str | None = None) -> dict:
    """Compare candidate with holder on the tasks (and the general-skills file); the gates' verdict.

    `weights`: generate through the serving engine with these weights (None: Hugging Face generate
    on full precision); the verdict records them and the candidate's decode backend."""

    from tunery.evaluation.compare import compare_models
    from tunery.evaluation.general_skills import GENERAL_TASKS_PATH

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"promote-{candidate.name}-"))
    task_files = ([Path(tasks)] if tasks is not None else []) + ([GENERAL_TASKS_PATH] if general else [])
    for path in task_files:
        if not path.is_file():
            raise ConfigError(f"task file {path} does not exist", code="file_not_found")
    results: list[dict[str, Any]] = []
    for index, path in enumerate(task_files):
        extra: dict[str, Any] = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
        summary = compare_models([served_ref(holder), served_ref(candidate)], path, out / f"tasks-{index}",
                                 gates=gates, limit=limit, weights=weights, **extra)
        results.append({"tasks": str(path), "report": summary.report_path, "passed": summary.passed,
                        "gates": [g.as_dict() for g in summary.gates],
                        "decode": summary.models[-1].settings.get("decode")})
    return {"passed": all(r["passed"] for r in results), "baseline": holder.ref, "candidate": candidate.ref,
            "weights": weights or "full", "gates": [g for r in results for g in r["gates"]], "comparisons": results}


def served_ref(version: Version) -> str:
    """The model reference a version answers as: its run, with `+rag:INDEX_DIR` when an index is attached."""
    return version.run_dir + (f"+rag:{version.rag_index}" if version.rag_index else "")


def rollback(store: Store, name: str, *, alias: str = DEFAULT_ALIAS, actor: str | None = None,
             reason: str | None = None) -> dict:
    """Put back the version that held `alias` before its last move."""
    name, _ = parse_ref(name)
    moves = [m for m in rows.alias_history(store, name, alias) if m["outcome"] == "moved"]
    if not moves or moves[-1]["from_version"] is None:
        raise ConfigError(f"the alias {alias!r} has no previous version to roll back to", code="no_previous_version",
                          hint="`tunery models show NAME` lists the alias's history")
    last = moves[-1]
    if not rows.move_alias(store, name, alias, last["from_version"], expected=last["to_version"], actor=actor,
                           action="rollback", reason=reason):
        raise PromotionConflict(f"the alias {alias!r} moved while rolling back", hint="look at `tunery models show`")
    return {"name": name, "alias": alias, "from": last["to_version"], "to": last["from_version"]}


def describe(store: Store, ref: str) -> dict:
    """A version's record, its aliases, its lineage back to the base, the alias history and its feedback."""
    name, selector = parse_ref(ref)
    version = resolve_version(store, ref) if selector else None
    versions = rows.list_versions(store, name)
    if not versions:
        raise NotFoundError(f"no model {name!r} in the registry", code="version_not_found")
    version = version or next((v for v in reversed(versions)
                               if v.version == rows.alias_version(store, name, DEFAULT_ALIAS)), versions[-1])
    chain, parent = [], version.parent
    while parent:
        parent_version = resolve_version(store, parent)
        chain.append(parent_version.ref)
        parent = parent_version.parent
    chain.append(version.base_model)
    held = {alias: v for (_, alias), v in rows.aliases(store, name).items()}
    stats = feedback_counts(store).get(version.ref, {"up": 0, "down": 0, "corrections": 0})
    return {"version": version.ref, "run_dir": version.run_dir, "rag_index": version.rag_index, "aliases": sorted(a for a, v in held.items()
                                                                                  if v == version.version),
            "lineage": [version.ref, *chain], "base_model": version.base_model,
            "base_weights_sha256": version.base_weights_sha256, "dataset_version": version.dataset_version,
            "data_files": version.lineage.get("data_files"), "metrics": version.lineage.get("metrics"),
            "job_id": version.job_id, "created_by": version.created_by, "created_at": version.created_at,
            "reports": version.reports, "production_stats": stats,
            "history": rows.alias_history(store, name)}
