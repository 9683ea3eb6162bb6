"""Turn a model reference string into a `ResolvedModel`: where its weights and tokenizer live.

Resolution never executes code from the model: pickle weights are refused, remote code is off.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

from tunery.errors import ModelError, RetrievalError
from tunery.models.builtin import BUILTIN_MODELS, builtin_model_dir

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")  # fullmatch: no final newline
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_HUB_FILES = ["*.safetensors", "*.json", "tokenizer*", "*.model", "*.txt", "*.jinja"]


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference made concrete.

    `path` is the Hugging Face folder holding the (base) weights; for a `.gguf` reference it is
    the folder of the file and `gguf_file` its name. For a run directory, `adapter_path` is its
    PEFT folder (on the base at `path`), `run_dir` the run, and `tokenizer_path` the run's own
    tokenizer files.
    """

    ref: str
    kind: str  # builtin | folder | gguf | hub | run
    path: Path
    gguf_file: str | None = None
    adapter_path: Path | None = None
    base_ref: str | None = None
    run_dir: Path | None = None
    tokenizer_path: Path | None = None
    rag_index: Path | None = None  # `MODEL+rag:INDEX_DIR`: answers retrieve from this index first

    @property
    def tokenizer_source(self) -> Path:
        return self.tokenizer_path or self.path


RAG_SUFFIX = "+rag:"


def resolve_model(ref: str | Path) -> ResolvedModel:
    """Resolve a built-in alias, folder, `.gguf` file, run directory or hub id, optionally `+rag:INDEX_DIR`."""
    ref_str = str(ref).strip()
    if RAG_SUFFIX in ref_str:
        return _resolve_with_index(ref_str)
    if not ref_str:
        raise ModelError("empty model reference", code="model_not_found",
                         hint="pass a built-in alias such as 'smollm2-135m-instruct', a folder or a .gguf file")
    if ref_str in BUILTIN_MODELS:
        return ResolvedModel(ref=ref_str, kind="builtin", path=builtin_model_dir(ref_str))
    path = Path(ref_str).expanduser()
    if path.exists():
        return _resolve_path(ref_str, path)
    if "@" in ref_str and not ref_str.startswith(("/", ".", "~")):
        raise ModelError(f"model reference {ref_str!r} names a registry version; this command reads a model "
                         "from a path, not from the registry", code="model_not_found",
                         hint=f"pass the version's run directory (`tunery models show {ref_str}` prints it); "
                         f"a running `tunery serve` answers requests for model {ref_str!r} itself")
    if _HUB_ID.fullmatch(ref_str) and not ref_str.startswith("."):
        return _resolve_hub(ref_str)
    raise ModelError(
        f"model {ref_str!r} not found: it is not a built-in alias, an existing file or folder, or a hub id",
        code="model_not_found",
        hint=f"built-in models: {', '.join(BUILTIN_MODELS)}; or pass a local folder, a .gguf file or a run directory",
    )


def _resolve_with_index(ref: str) -> ResolvedModel:
    """`MODEL+rag:INDEX_DIR`: the model as usual, plus the index folder (checked to be an index)."""
    model_ref, _, index = ref.rpartition(RAG_SUFFIX)
    if not model_ref.strip() or not index.strip():
        raise ModelError(f"model reference {ref!r} is not MODEL+rag:INDEX_DIR", code="model_not_found",
                         hint="e.g. smollm2-135m-instruct+rag:indexes/kb")
    index_dir = Path(index.strip()).expanduser()
    if not (index_dir / "manifest.json").is_file():
        what = "does not exist" if not index_dir.exists() else "is not a tunery index (no manifest.json)"
        raise RetrievalError(f"index {index_dir} in {ref!r} {what}", code="index_not_found",
                             hint=f"build it with: tunery rag index DOCS... --out {index_dir}")
    return replace(resolve_model(model_ref), ref=ref, rag_index=index_dir.resolve())


def looks_like_hub_id(ref: str) -> bool:
    """True for `owner/name` references that are not an existing local path."""
    return bool(_HUB_ID.fullmatch(ref)) and not ref.startswith(".") and not Path(ref).expanduser().exists()


def _resolve_path(ref: str, path: Path) -> ResolvedModel:
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return ResolvedModel(ref=ref, kind="gguf", path=path.parent, gguf_file=path.name)
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise _pickle_error(path)
        raise ModelError(f"{path} is a file but not a .gguf model", code="model_not_found",
                         hint="pass a model folder, a .gguf file or a run directory")
    if (path / "run.json").is_file():
        return _resolve_run(ref, path)
    check_safetensors_folder(path)
    return ResolvedModel(ref=ref, kind="folder", path=path)


def check_safetensors_folder(path: Path) -> None:
    """Refuse folders without a config or whose weights are only pickle files."""
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a model folder (no config.json)", code="model_not_found",
                         hint="pass a Hugging Face model folder, a .gguf file or a run directory")
    if any(path.glob("*.safetensors")):
        return
    if any(p.suffix.lower() in _PICKLE_SUFFIXES for p in path.iterdir()):
        raise _pickle_error(path)
    raise ModelError(f"{path} has no .safetensors weights", code="no_weights",
                     hint="save the model with save_pretrained(..., safe_serialization=True)")


def _pickle_error(path: Path) -> ModelError:
    return ModelError(
        f"{path} holds only pickle weights (.bin/.pt); tunery never loads pickle because "
        "unpickling can execute arbitrary code",
        code="pickle_refused",
        hint="convert it once in a trusted environment: AutoModelForCausalLM.from_pretrained(folder)"
        ".save_pretrained(out, safe_serialization=True), then pass the new folder",
    )


def _resolve_run(ref: str, run_dir: Path) -> ResolvedModel:
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{run_dir / 'run.json'} is unreadable: {exc}", code="bad_run_dir") from None
    lineage = info.get("lineage") or {}
    base_ref = lineage.get("base_model") or info.get("base_model")
    tokenizer_path = run_dir if (run_dir / "tokenizer_config.json").is_file() else None
    if (run_dir / "model" / "config.json").is_file():
        check_safetensors_folder(run_dir / "model")
        return ResolvedModel(ref=ref, kind="run", path=run_dir / "model", base_ref=base_ref,
                             run_dir=run_dir, tokenizer_path=tokenizer_path or run_dir / "model")
    if (run_dir / "adapter" / "adapter_config.json").is_file():
        if not base_ref:
            raise ModelError(f"{run_dir / 'run.json'} does not name its base model", code="bad_run_dir")
        base = resolve_model(base_ref)
        return ResolvedModel(ref=ref, kind="run", path=base.path, gguf_file=base.gguf_file,
                             adapter_path=run_dir / "adapter", base_ref=base_ref, run_dir=run_dir,
                             tokenizer_path=tokenizer_path or base.tokenizer_source)
    raise ModelError(f"run {run_dir} has no adapter/ or model/ folder (status: {info.get('status')})",
                     code="run_incomplete", hint="the run may have failed or still be running")


def _resolve_hub(repo_id: str) -> ResolvedModel:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, allow_patterns=_HUB_FILES)
    except Exception as exc:  # offline, unknown repo, gated repo: all end the same way for the user
        raise ModelError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(exc).__name__})",
            code="hub_unavailable",
            hint="without network access, download the model elsewhere and pass its local folder "
            "(safetensors weights), or a .gguf file",
        ) from None
    path = Path(folder)
    check_safetensors_folder(path)
    return ResolvedModel(ref=repo_id, kind="hub", path=path)
