"""Dense vectors from a local sentence-transformers model folder: never a download, never remote code."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tunery.errors import ConfigError, RetrievalError


@lru_cache(maxsize=2)
def load_embedder(model_dir: str):
    """A SentenceTransformer from a local folder, on CPU unless CUDA is there."""
    path = Path(model_dir)
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise RetrievalError(f"embedding model {model_dir} is not a sentence-transformers folder",
                             code="embedding_model_not_found",
                             hint="pass a local folder saved with SentenceTransformer.save()")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise ConfigError("dense retrieval needs the sentence-transformers package", code="missing_dependency",
                          hint="pip install 'tunery[dense]', or leave out --embedding-model (bm25 needs no model)"
                          ) from None
    return SentenceTransformer(str(path), trust_remote_code=False, local_files_only=True)


def embed_texts(model_dir: str, texts: list[str]):
    """Unit-length float32 vectors, one row per text."""
    import numpy as np

    model = load_embedder(model_dir)
    if not texts:
        return np.zeros((0, model.get_sentence_embedding_dimension() or 1), dtype=np.float32)
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return np.asarray(vectors, dtype=np.float32)
