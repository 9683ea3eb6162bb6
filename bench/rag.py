"""Retrieval benchmark: index build time and query latency at 100k chunks, tunery against bare bm25s.

A synthetic corpus (Zipf-distributed words, one paragraph per chunk-sized piece) is indexed by
`tunery rag index` (read, chunk by the model's tokens, bm25s, manifest) and, on the very chunks
tunery made, by bm25s alone (tokenize + index + save): the ratio is what tunery's reading,
chunking and bookkeeping cost. Queries are timed one at a time, as a server answers them.

    python -m bench.rag                        # 100k chunks, writes docs/benchmarks-rag.md
    python -m bench.rag --chunks 20000 --no-docs
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.rag", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--chunks", type=int, default=100_000, help="About how many chunks the corpus makes.")
    p.add_argument("--chunk-tokens", type=int, default=64, help="Most tokens per chunk.")
    p.add_argument("--files", type=int, default=200, help="Documents the corpus is split into.")
    p.add_argument("--queries", type=int, default=200, help="Queries timed (one at a time).")
    p.add_argument("--model", default="smollm2-135m-instruct", help="Model whose tokenizer chunks.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-docs", dest="docs", action="store_false", help="Do not write docs/benchmarks-rag.md.")
    return p.parse_args(argv)


def make_corpus(folder: Path, chunks: int, files: int, seed: int) -> list[str]:
    """Write `files` Markdown files of short paragraphs (9 words, ~60 tokens: about one chunk each);
    return some paragraphs' rare words to query with."""
    rng = random.Random(seed)
    vocab = [f"w{i}" + "".join(rng.choice("aeioulnrst") for _ in range(4)) for i in range(50_000)]
    # cum_weights once (random.choices would sum 50k weights per call) and ranks by dict: the same corpus, in
    # seconds instead of most of the run.
    cum_weights = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(vocab))))
    rank_of = {word: rank for rank, word in enumerate(vocab)}
    folder.mkdir(parents=True, exist_ok=True)
    per_file = max(1, chunks // files)
    queries = []
    for number in range(files):
        paragraphs = []
        for _ in range(per_file):
            words = rng.choices(vocab, cum_weights=cum_weights, k=9)
            paragraphs.append(" ".join(words).capitalize() + ".")
            if len(queries) < 5000 and rng.random() < 0.2:
                queries.append(" ".join(sorted(words, key=rank_of.__getitem__)[-3:]))
        (folder / f"doc{number:04d}.md").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    return queries


def time_tunery(docs: Path, out: Path, model: str, chunk_tokens: int) -> tuple[float, object]:
    from tunery.models import load_tokenizer
    from tunery.rag import build_index

    load_tokenizer(model)  # the tokenizer load is not the index build
    started = time.perf_counter()
    report = build_index([docs], out, model=model, chunk_tokens=chunk_tokens, overlap_tokens=0)
    return time.perf_counter() - started, report


def time_bm25s(index: Path, out: Path) -> float:
    import bm25s

    from tunery.rag.index import BM25_STOPWORDS, BM25_TOKEN_PATTERN

    texts = [json.loads(line)["text"] for line in (index / "chunks.jsonl").open(encoding="utf-8")]
    started = time.perf_counter()
    tokens = bm25s.tokenize(texts, stopwords=BM25_STOPWORDS, token_pattern=BM25_TOKEN_PATTERN, show_progress=False)
    retriever = bm25s.BM25(method="lucene")
    retriever.index(tokens, show_progress=False)
    retriever.save(str(out), show_progress=False)
    return time.perf_counter() - started


def time_queries(index_dir: Path, queries: list[str]) -> tuple[list[float], list[float]]:
    import bm25s

    from tunery.rag import RagIndex
    from tunery.rag.index import BM25_STOPWORDS, BM25_TOKEN_PATTERN

    index = RagIndex(index_dir)
    bare = index.bm25
    ours, theirs = [], []
    for query in queries:
        started = time.perf_counter()
        index.search(query, k=5)
        ours.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        tokens = bm25s.tokenize([query], stopwords=BM25_STOPWORDS, token_pattern=BM25_TOKEN_PATTERN,
                                show_progress=False)
        bare.retrieve(tokens, k=5, show_progress=False, n_threads=1)
        theirs.append((time.perf_counter() - started) * 1000)
    return ours, theirs


def render(args, report, tunery_s, bm25s_s, ours, theirs, load: tuple[float, float] | None = None) -> str:
    from tunery.host import cpu_model

    def p(values, q):
        return statistics.quantiles(values, n=100)[q - 1]

    machine = f"Measured on {cpu_model()}, {os.cpu_count()} logical CPUs" + (
        f", 1-minute load average {load[0]:.1f} before and {load[1]:.1f} after (a shared machine: compare the "
        "two columns, measured side by side, not the absolute times)." if load else ".")
    return "\n".join([
        "# Retrieval benchmark", "",
        "Generated by `python -m bench.rag` (" + f"{report.chunks} chunks of at most {args.chunk_tokens} tokens from "
        f"{report.sources} files, {len(ours)} queries, k=5). Lower is better.", "",
        "| | tunery | bare bm25s | ratio |", "|---|---|---|---|",
        f"| index build (s) | {tunery_s:.1f} | {bm25s_s:.1f} | {tunery_s / bm25s_s:.1f}x |",
        f"| query latency, median (ms) | {statistics.median(ours):.2f} | {statistics.median(theirs):.2f} | "
        f"{statistics.median(ours) / statistics.median(theirs):.2f}x |",
        f"| query latency, p95 (ms) | {p(ours, 95):.2f} | {p(theirs, 95):.2f} | {p(ours, 95) / p(theirs, 95):.2f}x |",
        "",
        "tunery's build reads and hashes every file, splits paragraphs and sentences, counts tokens with the "
        "model's tokenizer and writes chunks.jsonl and the manifest; bare bm25s only tokenizes by regex and "
        "indexes the finished chunks, so the ratio is the price of chunking by model tokens with citations. "
        "A query costs the same bm25s retrieval plus the lookup of each hit's chunk record.", "", machine, ""])


def main(argv=None) -> None:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-rag-") as tmp:
        root = Path(tmp)
        queries = make_corpus(root / "docs", args.chunks, args.files, args.seed)
        rng = random.Random(args.seed)
        queries = [rng.choice(queries) for _ in range(args.queries)]
        tunery_s, report = time_tunery(root / "docs", root / "index", args.model, args.chunk_tokens)
        bm25s_s = time_bm25s(root / "index", root / "bare")
        ours, theirs = time_queries(root / "index", queries)
    text = render(args, report, tunery_s, bm25s_s, ours, theirs, load=(load_before, os.getloadavg()[0]))
    print(text)
    if args.docs:
        (REPO / "docs" / "benchmarks-rag.md").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
