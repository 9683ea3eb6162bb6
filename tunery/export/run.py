"""`export_run`: refuse unfinished runs, write into a temp folder, verify by logits, then rename.

The output folder appears only after verification passed, so a folder at `--out` always holds
a verified export; drift, a crash or Ctrl-C leave nothing behind that looks finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tunery.errors import ConfigError, ExportError
from tunery.export.merged import MERGED_DTYPES, reload_adapter, reload_merged, write_adapter, write_merged
from tunery.export.source import RunSource, load_run_model, merge_adapter, read_run
from tunery.export.verify import (
    Verification,
    check_tokenizer,
    compare_logits,
    compute_logits,
    fixed_prompt_ids,
)
from tunery.models import load_model, resolve_model
from tunery.models.card import model_card, point_adapter_at_hub
from tunery.paths import GATES_FILE
from tunery.safeio import make_private

FORMATS = ("adapter", "merged", "gguf")
MANIFEST = "tunery-export.json"


@dataclass
class ExportResult:
    """Where the export went and the verification numbers that allowed it to be published."""

    format: str
    dtype: str
    path: str
    out_dir: str
    run_dir: str
    verification: Verification
    files: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return self.verification.max_abs_diff

    @property
    def tolerance(self) -> float:
        return self.verification.tolerance

    @property
    def num_prompts(self) -> int:
        return self.verification.num_prompts

    def as_dict(self) -> dict:
        return {"format": self.format, "dtype": self.dtype, "path": self.path, "out_dir": self.out_dir,
                "run_dir": self.run_dir, "verification": self.verification.as_dict(), "files": self.files}


def export_run(run_dir: str | Path, fmt: str, out_dir: str | Path, *, dtype: str | None = None,
               ollama: bool = False, overwrite: bool = False) -> ExportResult:
    """Export a completed run as `adapter`, `merged` or `gguf` into `out_dir`, verified.

    An existing `out_dir` (other than an empty folder) is replaced only with `overwrite`, and only
    when it is a file or an earlier tunery export: a folder of other files is never deleted.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}", code="invalid_format",
                          hint=f"use one of: {', '.join(FORMATS)}")
    if ollama and fmt != "gguf":
        raise ConfigError("--ollama needs --format gguf", code="invalid_option")
    source = read_run(run_dir)
    out = check_out_dir(Path(out_dir), overwrite=overwrite)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        exporter = {"adapter": export_adapter, "merged": export_merged, "gguf": export_gguf}[fmt]
        chosen_dtype, artifact, verification = exporter(source, tmp, dtype, ollama)
        manifest = {"format": fmt, "dtype": chosen_dtype, "artifact": artifact, "run": source.name,
                    "run_dir": str(source.run_dir), "method": source.method,
                    "lineage": source.info.get("lineage") or {}, "gated": last_gate(source.run_dir),
                    "verification": verification.as_dict()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        make_private(tmp)  # weights trained on private data: owner-only until the user shares them
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(format=fmt, dtype=chosen_dtype, path=str(out / artifact) if artifact else str(out),
                        out_dir=str(out), run_dir=str(source.run_dir), verification=verification,
                        files=sorted(p.name for p in out.iterdir()))


def last_gate(run_dir: Path) -> dict | None:
    """The latest comparison that gated this run (`tunery compare --gate`): its weights and verdict."""
    try:
        lines = (Path(run_dir) / GATES_FILE).read_text(encoding="utf-8").splitlines()
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def check_out_dir(out: Path, *, overwrite: bool = False) -> Path:
    """`out` when an export may be published there: new, an empty folder, or replaceable with `overwrite`."""
    out = Path(os.path.abspath(out.expanduser()))  # not resolve(): a link at --out is replaced, not followed
    if out.is_symlink() or out.is_file():
        kind = "file"
    elif out.is_dir():
        if not any(out.iterdir()):
            return out
        kind = "export" if (out / MANIFEST).is_file() else "folder"
    elif out.exists():
        raise ExportError(f"{out} exists and is not a file or folder", code="output_exists", hint="choose another --out")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out
    if kind == "folder":
        raise ExportError(f"{out} already exists and holds files that are not a tunery export", code="output_exists",
                          hint="choose a new --out folder; --overwrite replaces only a file or an earlier export")
    if not overwrite:
        raise ExportError(f"{out} already exists ({'an earlier export' if kind == 'export' else 'a file'})",
                          code="output_exists", hint="pass --overwrite to replace it, or choose a new --out")
    return out


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` to `out`; a target being replaced moves aside first and goes only after."""
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)  # the earlier target comes back as it was
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


def published_dtype(source: RunSource) -> str:
    """The dtype the base (or full model) was published in, read from its config.json."""
    folder = resolve_model(str(source.run_dir)).path
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "fp32"
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return {"bfloat16": "bf16", "float16": "fp16"}.get(name, "fp32")


def write_card(folder: Path, kind: str, source: RunSource) -> None:
    (folder / "README.md").write_text(model_card(kind, source.name, source.info), encoding="utf-8")


def export_adapter(source: RunSource, tmp: Path, dtype: str | None, ollama: bool):
    if dtype not in (None, "fp32"):
        raise ConfigError("an adapter is exported as trained; --dtype does not apply", code="invalid_option")
    if not source.base_ref:
        raise ExportError(f"run {source.name} does not name its base model", code="run_incomplete")
    write_adapter(source.run_dir, tmp)
    point_adapter_at_hub(tmp, source.base_ref)
    write_card(tmp, "adapter", source)
    model, tokenizer = load_model(str(source.run_dir), dtype="fp32", device="cpu")
    prompt_ids = fixed_prompt_ids(tokenizer)
    reference = compute_logits(model, prompt_ids)
    del model
    exported, exported_tokenizer = reload_adapter(tmp, source.base_ref)
    check_tokenizer(prompt_ids, exported_tokenizer, "adapter export")
    return "fp32", "", compare_logits(reference, compute_logits(exported, prompt_ids), "fp32", "adapter export")


def merged_source(source: RunSource):
    """fp32 merged model, its tokenizer, the fixed prompts and the run's own logits on them."""
    model, tokenizer = load_run_model(source)
    prompt_ids = fixed_prompt_ids(tokenizer)
    reference = compute_logits(model, prompt_ids)
    return merge_adapter(model), tokenizer, prompt_ids, reference


def export_merged(source: RunSource, tmp: Path, dtype: str | None, ollama: bool):
    chosen = dtype or published_dtype(source)
    if chosen not in MERGED_DTYPES:
        raise ConfigError(f"merged export dtype must be one of {', '.join(MERGED_DTYPES)}, got {chosen!r}",
                          code="invalid_dtype")
    model, tokenizer, prompt_ids, reference = merged_source(source)
    write_merged(model, tokenizer, tmp, chosen)
    write_card(tmp, "merged", source)
    del model
    exported, exported_tokenizer = reload_merged(tmp)
    check_tokenizer(prompt_ids, exported_tokenizer, "merged export")
    return chosen, "", compare_logits(reference, compute_logits(exported, prompt_ids), chosen, "merged export")


def export_gguf(source: RunSource, tmp: Path, dtype: str | None, ollama: bool):
    from tunery.export.gguf_file import (
        GGUF_TYPES,
        check_gguf_support,
        reload_gguf,
        write_gguf,
        write_modelfile,
    )

    chosen = dtype or "f16"
    if chosen not in GGUF_TYPES:
        raise ConfigError(f"GGUF dtype must be one of {', '.join(GGUF_TYPES)}, got {chosen!r}",
                          code="invalid_dtype")
    model, tokenizer, prompt_ids, reference = merged_source(source)
    check_gguf_support(model, tokenizer)
    # The run folder's name may hold anything a file system allows; the file name gets a safe form.
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "-", source.name).strip("-.") or "model"
    file_name = f"{safe_name}-{chosen}.gguf"
    write_gguf(model, tokenizer, tmp / file_name, chosen, name=safe_name,
               card=model_card("gguf", source.name, source.info))
    del model
    exported, exported_tokenizer = reload_gguf(tmp / file_name)
    check_tokenizer(prompt_ids, exported_tokenizer, "GGUF export")
    verification = compare_logits(reference, compute_logits(exported, prompt_ids), chosen, "GGUF export")
    if ollama:
        write_modelfile(tmp, file_name, tokenizer)
    return chosen, file_name, verification
