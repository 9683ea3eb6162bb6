"""The thing being exported: a completed run, loaded in fp32 as it behaves, and merged into one model.

A run that did not complete is refused here, before anything is written. A QLoRA run's adapter
was trained against the 4-bit base, so it is merged into that base de-quantised, not the original.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunery.errors import ExportError
from tunery.models import load_model, load_tokenizer
from tunery.models.load import attach_saved_adapter


@dataclass
class RunSource:
    """A completed run directory and what its run.json says about it."""

    run_dir: Path
    info: dict
    method: str
    base_ref: str | None

    @property
    def name(self) -> str:
        return self.run_dir.name


def read_run(run_dir: str | Path) -> RunSource:
    """The run at `run_dir`, or ExportError if it is not a run or did not complete."""
    run_dir = Path(run_dir).expanduser().resolve()
    run_json = run_dir / "run.json"
    if not run_json.is_file():
        raise ExportError(f"{run_dir} is not a run directory (no run.json)", code="not_a_run",
                          hint="pass the folder `tunery train` wrote, e.g. ~/.tunery/runs/NAME")
    try:
        info = json.loads(run_json.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportError(f"{run_json} is not valid JSON ({exc})", code="not_a_run") from None
    status = info.get("status")
    if status != "completed":
        raise ExportError(f"run {run_dir.name} has status {status!r}; only completed runs are exported",
                          code="run_not_completed",
                          hint="resume it with `tunery train --resume RUN_DIR`, or export another run")
    has_adapter = (run_dir / "adapter" / "adapter_config.json").is_file()
    has_model = (run_dir / "model" / "config.json").is_file()
    if not has_adapter and not has_model:
        raise ExportError(f"run {run_dir.name} is marked completed but has no adapter/ or model/ folder",
                          code="run_incomplete")
    method = info.get("method") or ("full" if has_model else "lora")
    base_ref = (info.get("lineage") or {}).get("base_model") or info.get("base_model")
    return RunSource(run_dir=run_dir, info=info, method=method, base_ref=base_ref)


def load_run_model(source: RunSource):
    """`(model, tokenizer)` in fp32 exactly as the run computes: adapter unmerged, QLoRA base de-quantised."""
    if source.method == "qlora" and (source.run_dir / "adapter").is_dir():
        return load_qlora_run(source)
    return load_model(str(source.run_dir), dtype="fp32", device="cpu")


def load_qlora_run(source: RunSource):
    """The 4-bit NF4 base de-quantised to fp32, with the run's adapter on it."""
    import torch


    if not source.base_ref:
        raise ExportError(f"run {source.name} does not name its base model", code="run_incomplete")
    try:
        quantized, _ = load_model(source.base_ref, dtype="bf16", load_in_4bit=True, device="cpu", with_adapter=False)
        base = quantized.dequantize()
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"cannot de-quantise the 4-bit base of QLoRA run {source.name}: {exc}",
                          code="dequantize_failed", hint="bitsandbytes must be able to load the base in 4-bit "
                          "on this machine") from None
    base = base.to(torch.float32)
    model = attach_saved_adapter(base, source.run_dir / "adapter")
    model.eval()
    return model, load_tokenizer(str(source.run_dir))


def merge_adapter(model):
    """A plain transformers model with any PEFT adapter folded into its weights."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return model.merge_and_unload()
    return model
