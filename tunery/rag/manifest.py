"""The index manifest: what an index directory holds and how it was built, checked before any use.

`manifest.json` is written last, so a folder without one is not an index. It records the
sha256 of every source, the chunking settings, the tokenizer and the library versions; an index
built differently from what reads it fails with the command that rebuilds it. No torch here.
"""

from __future__ import annotations

import json
import shlex
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tunery.errors import RetrievalError

INDEX_FORMAT = 1
MANIFEST = "manifest.json"
CHUNKS = "chunks.jsonl"
BM25_DIR = "bm25"
DENSE_FILE = "dense.npy"


def library_versions(dense: bool) -> dict[str, str]:
    """Versions of the libraries whose file formats or scores an index depends on."""
    names = ["bm25s"] + (["sentence-transformers"] if dense else [])
    versions = {}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "missing"
    return versions


def rebuild_command(manifest: dict, index_dir: Path | str) -> str:
    """The `tunery rag index` command that rebuilds this index from its recorded inputs and settings."""
    settings = manifest.get("settings")
    settings = settings if isinstance(settings, dict) else {}
    inputs = manifest.get("inputs")
    inputs = [str(i) for i in inputs] if isinstance(inputs, list) and inputs else ["DOCS..."]
    parts = ["tunery", "rag", "index", *inputs, "--out", str(index_dir)]
    parts += ["--model", str(settings.get("model") or "MODEL")]
    for option, key in (("--chunk-tokens", "chunk_tokens"), ("--overlap-tokens", "overlap_tokens")):
        if isinstance(settings.get(key), int):  # a damaged manifest may not say: the defaults then apply
            parts += [option, str(settings[key])]
    if settings.get("embedding_model"):
        parts += ["--embedding-model", str(settings["embedding_model"])]
    return " ".join(shlex.quote(p) for p in parts) + " --rebuild"


def read_manifest(index_dir: str | Path) -> dict:
    """The manifest of an index, after checking its format and library versions."""
    index_dir = Path(index_dir).expanduser()
    path = index_dir / MANIFEST
    if not index_dir.exists():
        raise RetrievalError(f"index {index_dir} does not exist", code="index_not_found",
                          hint=f"build it with: tunery rag index DOCS... --out {shlex.quote(str(index_dir))}")
    if not path.is_file():
        raise RetrievalError(f"{index_dir} is not a tunery index (no {MANIFEST})", code="index_not_found",
                          hint=f"build one with: tunery rag index DOCS... --out {shlex.quote(str(index_dir))}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RetrievalError(f"{path} is unreadable: {exc}", code="index_corrupt",
                          hint="rebuild the index with `tunery rag index ... --rebuild`") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise RetrievalError(f"{index_dir} has index format {found!r}; this tunery reads format {INDEX_FORMAT}",
                          code="index_version",
                          hint=f"rebuild it: {rebuild_command(manifest if isinstance(manifest, dict) else {}, index_dir)}")
    check_libraries(manifest, index_dir)
    check_fields(manifest, index_dir)
    return manifest


def check_fields(manifest: dict, index_dir: Path) -> None:
    """Refuse a manifest whose fields are not what `tunery rag index` writes (a hand edit, a truncated copy),
    naming the field, before any search trips over it."""
    settings = manifest.get("settings")
    problem = None
    if not isinstance(settings, dict):
        problem = "settings: not an object"
    elif not isinstance(settings.get("tokenizer_sha256"), str):
        problem = "settings.tokenizer_sha256: not a string"
    elif not (isinstance(settings.get("bm25"), dict) and isinstance(settings["bm25"].get("token_pattern"), str)
              and isinstance(settings["bm25"].get("stopwords"), str | list)):
        problem = "settings.bm25: not an object with token_pattern and stopwords"
    elif settings.get("embedding_model") is not None and not isinstance(settings["embedding_model"], str):
        problem = "settings.embedding_model: not a folder name"
    elif settings.get("top_k") is not None and not _positive_int(settings["top_k"]):
        problem = f"settings.top_k: {settings['top_k']!r} is not a positive integer"
    elif not _positive_int(manifest.get("num_chunks")):
        problem = f"num_chunks: {manifest.get('num_chunks')!r} is not a positive integer"
    elif not (isinstance(manifest.get("sources"), dict) and all(
            isinstance(s, dict) and isinstance(s.get("sha256"), str) for s in manifest["sources"].values())):
        problem = "sources: not an object of {\"sha256\": ...} per source"
    if problem:
        raise RetrievalError(f"{index_dir / MANIFEST}: field {problem}", code="index_corrupt",
                             hint=f"rebuild it: {rebuild_command(manifest, index_dir)}")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_libraries(manifest: dict, index_dir: Path) -> None:
    """Refuse an index whose bm25s (or sentence-transformers) major.minor differs from the installed one."""
    built = manifest.get("libraries")
    settings = manifest.get("settings")
    built = built if isinstance(built, dict) else {}  # a hand-edited manifest: refused as another version
    installed = library_versions(dense=bool(isinstance(settings, dict) and settings.get("embedding_model")))
    for name, now in installed.items():
        then = built.get(name)
        if then is None or _major_minor(then) != _major_minor(now):
            built_with = f"{name} {then}" if then is not None else f"no recorded {name} version"
            raise RetrievalError(f"index {index_dir} was built with {built_with}, and {name} {now} is installed",
                              code="index_version",
                              hint=f"rebuild it with the installed version: {rebuild_command(manifest, index_dir)}")


def check_tokenizer(manifest: dict, index_dir: Path | str, tokenizer_sha256: str, model_ref: str) -> None:
    """Refuse to use an index with a model whose tokenizer differs from the one it was chunked with."""
    settings = manifest.get("settings", {})
    if settings.get("tokenizer_sha256") != tokenizer_sha256:
        model_ref = model_ref.rpartition("+rag:")[0] or model_ref  # the index is rebuilt for the model, not for itself
        fixed = dict(manifest, settings={**settings, "model": model_ref})
        raise RetrievalError(f"index {index_dir} was chunked with the tokenizer of {settings.get('model')!r}, "
                          f"which differs from the tokenizer of {model_ref!r}", code="index_tokenizer",
                          hint=f"rebuild it for this model: {rebuild_command(fixed, index_dir)}")


def _major_minor(text: str) -> tuple[str, ...]:
    return tuple(str(text).split(".")[:2])


def write_manifest(index_dir: Path, manifest: dict) -> None:
    manifest = {"format": INDEX_FORMAT, **manifest}
    (index_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
