"""Open an index directory and search it: bm25s by default, dense vectors, or both fused by reciprocal rank.

An index is opened once and searched many times (a server keeps it); opening checks the
manifest first, so an index from another version fails before any file is parsed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tunery.data import tokenizer_hash
from tunery.errors import ConfigError, RetrievalError
from tunery.rag.dense import embed_texts
from tunery.rag.manifest import BM25_DIR, CHUNKS, DENSE_FILE, check_tokenizer, read_manifest, rebuild_command

RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al. 2009)
MODES = ("bm25", "dense", "hybrid")


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk: its rank (1-based), score, and the chunk record (source, page, lines, text)."""

    rank: int
    score: float
    chunk: dict

    @property
    def source(self) -> str:
        return self.chunk["source"]

    @property
    def text(self) -> str:
        return self.chunk["text"]

    def citation(self) -> dict:
        """Where the chunk is: source, page or lines, character offsets (no text)."""
        c = self.chunk
        place = {"page": c["page"]} if c.get("page") is not None else {}
        return {"rank": self.rank, "score": round(self.score, 6), "source": c["source"], **place,
                "line": c["line"], "end_line": c["end_line"], "start": c["start"], "end": c["end"], "chunk": c["id"]}

    def as_dict(self) -> dict:
        return {**self.citation(), "text": self.text}

    def label(self) -> str:
        """`source p.3` or `source:12-14`, for a prompt or a terminal."""
        c = self.chunk
        if c.get("page") is not None:
            return f"{c['source']} p.{c['page']}"
        return f"{c['source']}:{c['line']}" + (f"-{c['end_line']}" if c["end_line"] != c["line"] else "")


class RagIndex:
    """A loaded index: chunk records, the bm25s retriever, and dense vectors when built with them."""

    def __init__(self, path: str | Path):
        import bm25s

        self.path = Path(path).expanduser()
        self.manifest = read_manifest(self.path)
        settings = self.manifest.get("settings")
        self.embedding_model = settings.get("embedding_model") if isinstance(settings, dict) else None
        self.vectors = None
        try:
            self.chunks = read_chunks(self.path / CHUNKS)
            if len(self.chunks) != self.manifest["num_chunks"]:
                raise ValueError(f"{len(self.chunks)} chunks, and the manifest says {self.manifest['num_chunks']}")
            self.bm25 = bm25s.BM25.load(str(self.path / BM25_DIR), show_progress=False)
            indexed = self.bm25.scores.get("num_docs") if isinstance(self.bm25.scores, dict) else None
            if indexed != len(self.chunks):  # a bm25/ folder from another index would return rows past the end
                raise ValueError(f"bm25/ indexes {indexed} chunks, and chunks.jsonl holds {len(self.chunks)}")
            if self.embedding_model:
                import numpy as np

                self.vectors = np.load(self.path / DENSE_FILE, allow_pickle=False)
                if self.vectors.ndim != 2 or len(self.vectors) != len(self.chunks):
                    raise ValueError(f"{DENSE_FILE} of shape {self.vectors.shape} for {len(self.chunks)} chunks")
        except (OSError, ValueError, KeyError) as exc:
            raise RetrievalError(f"index {self.path} is incomplete or damaged ({type(exc).__name__}: {exc})",
                                 code="index_corrupt",
                                 hint=f"rebuild it: {rebuild_command(self.manifest, self.path)}") from None

    @property
    def default_mode(self) -> str:
        return "hybrid" if self.vectors is not None else "bm25"

    def check_model(self, tokenizer, model_ref: str) -> None:
        """Refuse a model whose tokenizer is not the one the chunks were measured with."""
        check_tokenizer(self.manifest, self.path, tokenizer_hash(tokenizer), model_ref)

    def search(self, query: str, k: int = 5, mode: str | None = None) -> list[Hit]:
        """The `k` best chunks for `query`, best first."""
        mode = mode or self.default_mode
        if mode not in MODES:
            raise ConfigError(f"unknown retrieval mode {mode!r}", code="invalid_option", hint="bm25, dense or hybrid")
        if mode != "bm25" and self.vectors is None:
            raise ConfigError(f"index {self.path} has no dense vectors, so {mode!r} is not available",
                              code="invalid_option",
                              hint="rebuild it with --embedding-model MODEL_DIR, or search with --mode bm25")
        if k < 1:
            raise ConfigError(f"k must be at least 1, got {k}", code="invalid_option")
        if not query.strip():
            return []
        pool = max(k, 50) if mode == "hybrid" else k
        if mode == "bm25":
            ranked = self._bm25(query, pool)
        elif mode == "dense":
            ranked = self._dense(query, pool)
        else:
            ranked = fuse_ranks([self._bm25(query, pool), self._dense(query, pool)])
        return [Hit(rank=i + 1, score=score, chunk=self.chunks[row]) for i, (row, score) in enumerate(ranked[:k])]

    def _bm25(self, query: str, k: int) -> list[tuple[int, float]]:
        import bm25s

        settings = self.manifest["settings"]["bm25"]
        tokens = bm25s.tokenize([query], stopwords=settings["stopwords"], token_pattern=settings["token_pattern"],
                                return_ids=False, show_progress=False)
        known = [[t for t in tokens[0] if t in self.bm25.vocab_dict]]
        if not known[0]:
            return []
        rows, scores = self.bm25.retrieve(known, k=min(k, len(self.chunks)), show_progress=False, n_threads=1)
        return [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if s > 0]

    def _dense(self, query: str, k: int) -> list[tuple[int, float]]:
        import numpy as np

        vectors = self.vectors
        assert self.embedding_model is not None and vectors is not None, "only a dense index searches densely"
        query_vector = embed_texts(self.embedding_model, [query])[0]
        if query_vector.shape[0] != vectors.shape[1]:  # the model folder was replaced since the build
            raise RetrievalError(f"index {self.path} holds {vectors.shape[1]}-dimensional vectors, and "
                                 f"{self.embedding_model} makes {query_vector.shape[0]}-dimensional ones",
                                 code="index_corrupt", hint=f"rebuild it: {rebuild_command(self.manifest, self.path)}")
        scores = vectors @ query_vector
        top = np.argsort(-scores, kind="stable")[:k]
        return [(int(r), float(scores[r])) for r in top]


CHUNK_FIELDS = {"id": int, "source": str, "text": str, "line": int, "end_line": int, "start": int, "end": int}


def read_chunks(path: Path) -> list[dict]:
    """The chunk records of chunks.jsonl, each checked to hold what citations and prompts read (a ValueError
    naming the line and field otherwise)."""
    chunks = []
    with path.open(encoding="utf-8") as handle:
        for row, line in enumerate(handle):
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{CHUNKS} line {row + 1}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{CHUNKS} line {row + 1}: not an object")
            for name, kind in CHUNK_FIELDS.items():
                if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
                    raise ValueError(f"{CHUNKS} line {row + 1}: field {name!r} missing or not {kind.__name__}")
            if record["id"] != row or not (record.get("page") is None or isinstance(record["page"], int)):
                raise ValueError(f"{CHUNKS} line {row + 1}: field 'id' or 'page' is not what tunery writes")
            chunks.append(record)
    return chunks


def fuse_ranks(rankings: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each list adds 1 / (RRF_K + rank) to a row's score."""
    fused: dict[int, float] = {}
    for ranking in rankings:
        for rank, (row, _) in enumerate(ranking, start=1):
            fused[row] = fused.get(row, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


@lru_cache(maxsize=8)
def _open_cached(path: str, stamp: float) -> RagIndex:
    return RagIndex(path)


def open_index(path: str | Path) -> RagIndex:
    """A loaded index, shared while its manifest is unchanged (an update makes the next call reload)."""
    resolved = Path(path).expanduser().resolve()
    read_manifest(resolved)  # clear errors for a missing or foreign index, before the cache
    return _open_cached(str(resolved), (resolved / "manifest.json").stat().st_mtime)
