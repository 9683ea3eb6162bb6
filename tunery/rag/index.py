"""Build a versioned index directory from documents: chunks, a bm25s index, and dense vectors when asked.

The directory is written beside the target and swapped in at the end, so a failed build leaves
the old index whole. `update=True` re-chunks only sources whose sha256 changed and drops
sources no longer given; everything else is taken from the old index as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from tunery.data import tokenizer_hash
from tunery.errors import ConfigError, RetrievalError
from tunery.models import load_tokenizer
from tunery.rag.chunking import chunk_section
from tunery.rag.dense import embed_texts
from tunery.rag.manifest import (
    BM25_DIR,
    CHUNKS,
    DENSE_FILE,
    MANIFEST,
    library_versions,
    read_manifest,
    rebuild_command,
    write_manifest,
)
from tunery.rag.prompt import TEMPLATE_FILE, check_template
from tunery.rag.readers import SourceFile, find_sources, read_sections
from tunery.rag.retrieval import read_chunks

DEFAULT_MODEL = "smollm2-135m-instruct"
BM25_STOPWORDS = "en"
BM25_TOKEN_PATTERN = r"(?u)\b\w+\b"  # single characters count: part numbers and versions are made of them


@dataclass
class IndexReport:
    """What a build did: sources and chunks indexed, sources taken unchanged, warnings, time."""

    path: str
    sources: int
    chunks: int
    reused_sources: int
    rechunked_sources: int
    removed_sources: int
    seconds: float
    retrievers: list[str]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def build_index(inputs: Sequence[str | Path], out_dir: str | Path, *, model: str = DEFAULT_MODEL,
                chunk_tokens: int = 256, overlap_tokens: int = 32, embedding_model: str | Path | None = None,
                top_k: int = 5, template: str | None = None, update: bool = False, rebuild: bool = False,
                warn: Callable[[str], None] | None = None) -> IndexReport:
    """Index `inputs` (files and folders) into `out_dir`, chunked by the tokenizer of `model`.

    `top_k`: how many chunks a `+rag:` reference puts into a prompt; `template`: the prompt
    template (kept as `prompt.txt`, with `{context}` and `{question}`); both can change on update.
    """
    started = time.perf_counter()
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn is not None:
            warn(message)

    check_settings(chunk_tokens, overlap_tokens)
    if top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}", code="invalid_option")
    if template is not None:
        check_template(template)
    out = Path(out_dir).expanduser()
    dense_dir = str(Path(embedding_model).expanduser().resolve()) if embedding_model else None
    old = existing_index(out, update=update, rebuild=rebuild)
    tokenizer = load_tokenizer(model)
    settings = {"model": model, "tokenizer_sha256": tokenizer_hash(tokenizer), "chunk_tokens": chunk_tokens,
                "overlap_tokens": overlap_tokens, "embedding_model": dense_dir, "top_k": top_k,
                "bm25": {"method": "lucene", "stopwords": BM25_STOPWORDS, "token_pattern": BM25_TOKEN_PATTERN}}
    if old is not None and update:
        check_same_settings(old, settings, out)
    sources = find_sources(list(inputs), note)
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        reuse = reusable_chunks(out, old, sources) if (old is not None and update) else {}
        texts, per_source, dense_rows = write_chunks(staging / CHUNKS, sources, reuse, tokenizer, chunk_tokens,
                                                     overlap_tokens, note)
        if not texts:
            raise RetrievalError("the documents hold no text to index", code="no_documents",
                                 hint="check the warnings above: every file was empty or skipped")
        build_bm25(texts, staging / BM25_DIR)
        if dense_dir:
            write_dense(staging / DENSE_FILE, dense_dir, texts, dense_rows, out if reuse else None)
        retrievers = ["bm25", "dense"] if dense_dir else ["bm25"]
        if template is not None:
            (staging / TEMPLATE_FILE).write_text(template, encoding="utf-8")
        elif update and (out / TEMPLATE_FILE).is_file():
            shutil.copyfile(out / TEMPLATE_FILE, staging / TEMPLATE_FILE)
        write_manifest(staging, {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "inputs": [str(i) for i in inputs], "settings": settings, "libraries": library_versions(bool(dense_dir)),
            "retrievers": retrievers, "num_chunks": len(texts),
            "sources": {s.name: {"sha256": s.sha256, "size": s.size, "chunks": per_source[s.name]} for s in sources}})
        swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    old_names = set((old or {}).get("sources", {})) if update else set()
    reused = sum(1 for s in sources if s.name in reuse)
    return IndexReport(path=str(out), sources=len(sources), chunks=len(texts), reused_sources=reused,
                       rechunked_sources=len(sources) - reused,
                       removed_sources=len(old_names - {s.name for s in sources}),
                       seconds=round(time.perf_counter() - started, 3), retrievers=retrievers, warnings=warnings)


def check_settings(chunk_tokens: int, overlap_tokens: int) -> None:
    if chunk_tokens < 8:
        raise ConfigError(f"--chunk-tokens must be at least 8, got {chunk_tokens}", code="invalid_option")
    if not 0 <= overlap_tokens <= chunk_tokens // 2:
        raise ConfigError(f"--overlap-tokens must be between 0 and half of --chunk-tokens ({chunk_tokens // 2}), "
                          f"got {overlap_tokens}", code="invalid_option")


def existing_index(out: Path, *, update: bool, rebuild: bool) -> dict | None:
    """The manifest of the index at `out` (None when there is none); refuses to overwrite anything else."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file", code="invalid_option", hint="pass a folder for the index")
    if not (out / MANIFEST).is_file():
        if any(out.iterdir()):
            raise ConfigError(f"--out {out} is a folder that is not a tunery index; refusing to overwrite it",
                              code="output_exists", hint="pass an empty or new folder")
        return None
    if not (update or rebuild):
        raise ConfigError(f"{out} already holds an index", code="output_exists",
                          hint="pass --update to re-index changed files only, or --rebuild to build it anew")
    if rebuild:
        return {}
    return read_manifest(out)


def check_same_settings(old: dict, settings: dict, out: Path) -> None:
    before = old.get("settings", {})
    changed = [k for k in ("tokenizer_sha256", "chunk_tokens", "overlap_tokens", "embedding_model")
               if before.get(k) != settings.get(k)]
    if changed:
        names = ", ".join("tokenizer" if k == "tokenizer_sha256" else k for k in changed)
        raise RetrievalError(f"--update cannot change the index's {names}", code="index_settings",
                             hint=f"rebuild it: {rebuild_command(dict(old, settings={**before, **settings}), out)}")


def reusable_chunks(out: Path, old: dict, sources: list[SourceFile]) -> dict[str, list[tuple[int, dict]]]:
    """Old chunk records (with their old row numbers) of every source whose sha256 is unchanged."""
    same = {s.name for s in sources if old.get("sources", {}).get(s.name, {}).get("sha256") == s.sha256}
    reuse: dict[str, list[tuple[int, dict]]] = {name: [] for name in same}
    try:
        records = read_chunks(out / CHUNKS)
    except (OSError, ValueError) as exc:
        raise RetrievalError(f"index {out} is incomplete or damaged ({type(exc).__name__}: {exc}), so --update "
                             "cannot keep its chunks", code="index_corrupt",
                             hint=f"rebuild it: {rebuild_command(old, out)}") from None
    for row, record in enumerate(records):
        if record["source"] in reuse:
            reuse[record["source"]].append((row, record))
    return reuse


def write_chunks(path: Path, sources, reuse, tokenizer, chunk_tokens, overlap_tokens, note):
    """Stream every chunk to chunks.jsonl; return the texts, chunk counts per source, and for each row
    the old row whose dense vector it can keep (None for new chunks)."""
    texts: list[str] = []
    per_source: dict[str, int] = {}
    dense_rows: list[int | None] = []
    with path.open("w", encoding="utf-8") as handle:
        for source in sources:
            warned: list[str] = []
            note_source = partial(_note_into, warned, note)
            if source.name in reuse:
                records = ((row, record) for row, record in reuse[source.name])
            else:
                records = ((None, record) for section in read_sections(source, note_source)
                           for record in chunk_section(section, tokenizer, chunk_tokens=chunk_tokens,
                                                       overlap_tokens=overlap_tokens))
            count = 0
            for old_row, record in records:
                record = {"id": len(texts), **{k: v for k, v in record.items() if k != "id"}}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                texts.append(record["text"])
                dense_rows.append(old_row)
                count += 1
            if count == 0 and not warned:  # a reader that skipped the file has said why
                note(f"{source.path}: no text to index")
            per_source[source.name] = count
    return texts, per_source, dense_rows


def _note_into(seen: list[str], note, message: str) -> None:
    seen.append(message)
    note(message)


def build_bm25(texts: list[str], folder: Path) -> None:
    import bm25s

    tokens = bm25s.tokenize(texts, stopwords=BM25_STOPWORDS, token_pattern=BM25_TOKEN_PATTERN, show_progress=False)
    retriever = bm25s.BM25(method="lucene")
    retriever.index(tokens, show_progress=False)
    retriever.save(str(folder), show_progress=False)


def write_dense(path: Path, model_dir: str, texts: list[str], old_rows: list[int | None], old_index: Path | None):
    import numpy as np


    old = np.load(old_index / DENSE_FILE, allow_pickle=False) if old_index and (old_index / DENSE_FILE).is_file() \
        else None
    fresh = [i for i, row in enumerate(old_rows) if old is None or row is None]
    vectors = embed_texts(model_dir, [texts[i] for i in fresh])
    dim = vectors.shape[1] if fresh or old is None else old.shape[1]
    out = np.zeros((len(texts), dim), dtype=np.float32)
    if fresh:
        out[fresh] = vectors
    if old is not None:
        kept = [i for i, row in enumerate(old_rows) if row is not None]
        out[kept] = old[[old_rows[i] for i in kept]]
    np.save(path, out, allow_pickle=False)


def swap_in(staging: Path, out: Path) -> None:
    """Replace `out` with the finished `staging` folder; the old index is removed only after the swap."""
    if out.exists():
        retired = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(out)
