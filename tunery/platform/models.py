"""The models jobs produce: `ft:<base>:<suffix>:<short id>` for a succeeded job's adapter, and
`...:ckpt-step-N` for one of its checkpoints, found for a caller who may use them.

Only names: which adapter folder a name means and which base it needs. Loading is the server's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from tunery.errors import NotFoundError
from tunery.store import jobs as job_rows
from tunery.store.db import Store
from tunery.store.owners import Actor

CHECKPOINT = re.compile(r"(ft:.+):ckpt-step-(\d+)")  # fullmatch: no final newline


@dataclass(frozen=True)
class FineTunedModel:
    name: str
    base: str  # the job's `model`: the base name it was trained on
    adapter_dir: Path
    created: int
    step: int | None = None  # a checkpoint's step; None for the final adapter


def find_fine_tuned(store: Store, actor: Actor, name: str) -> FineTunedModel:
    """The adapter folder behind an `ft:` name the caller may use; NotFound otherwise."""
    unknown = NotFoundError(f"the model {name!r} does not exist", code="model_not_found",
                            hint="GET /v1/models lists the models you can use")
    match = CHECKPOINT.fullmatch(name)
    job_name, step = (match.group(1), int(match.group(2))) if match else (name, None)
    row = job_rows.job_by_model(store, actor, job_name)
    if row is None or not row["run_dir"]:
        raise unknown
    run_dir = Path(row["run_dir"])
    if step is None:
        adapter = run_dir / "adapter"
    else:
        checkpoint = run_dir / "checkpoints" / f"step-{step}"
        if not (checkpoint / "manifest.json").is_file():
            raise NotFoundError(f"checkpoint step {step} of {job_name} is no longer kept", code="model_not_found",
                                hint="GET /v1/fine_tuning/jobs/{id}/checkpoints lists the kept checkpoints")
        adapter = checkpoint_adapter(run_dir, step)
    if not adapter.is_dir():
        raise unknown
    return FineTunedModel(name=name, base=row["model"], adapter_dir=adapter, created=row["finished_at"] or 0,
                          step=step)


def list_fine_tuned(store: Store, actor: Actor, limit: int = 1000) -> list[FineTunedModel]:
    """The succeeded jobs' models the caller may use, newest first."""
    rows, _ = job_rows.list_jobs(store, actor, status="succeeded", limit=limit)
    return [FineTunedModel(name=r["fine_tuned_model"], base=r["model"], adapter_dir=Path(r["run_dir"]) / "adapter",
                           created=r["finished_at"] or 0) for r in rows if r["fine_tuned_model"]]


def checkpoint_adapter(run_dir: Path, step: int) -> Path:
    """A PEFT folder made once from a LoRA checkpoint's trainable tensors (for `...:ckpt-step-N`)."""
    from safetensors.torch import load_file, save_file

    target = run_dir / "checkpoint-adapters" / f"step-{step}"
    if (target / "adapter_model.safetensors").is_file():
        return target
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    lora = config.get("lora") or {}
    if config.get("method", "lora") not in ("lora", "qlora") or lora.get("use_dora"):
        raise NotFoundError("only LoRA checkpoints can be served as models", code="model_not_found")
    tensors = load_file(str(run_dir / "checkpoints" / f"step-{step}" / "trainable.safetensors"))
    renamed = {k.replace(".default.weight", ".weight"): v for k, v in tensors.items() if ".lora_" in k}
    tmp = target.with_name(f".tmp-{target.name}")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(renamed, str(tmp / "adapter_model.safetensors"))
    (tmp / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": lora.get("rank", 16),
                                                         "lora_alpha": lora.get("alpha", 32.0)}), encoding="utf-8")
    tmp.rename(target) if not target.exists() else None
    return target
