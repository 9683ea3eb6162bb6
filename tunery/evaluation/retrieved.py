"""Evaluation with retrieval: the prompts a `MODEL+rag:INDEX` reference answers, and what retrieval cost.

Each task row's question is searched in the index; the chunks go into the prompt through the
index's template, within the model's context. A row that names its expected `source` (a file)
or `evidence` (text the right chunk holds) counts towards the retrieval hit rate.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from tunery.errors import EvaluationError, TuneryError
from tunery.evaluation.tasks import TaskExample
from tunery.rag import Retriever


def model_context(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048))


def retrieval_prompts(index_dir: Path, model_ref: str, examples: list[TaskExample], model, tokenizer, *,
                      max_new_tokens: int) -> tuple[list[list[dict]], list[list[int]], list[dict]]:
    """Messages and token ids with retrieved context for every example, and per row what was retrieved."""
    retriever = Retriever.open(index_dir)
    retriever.index.check_model(tokenizer, model_ref.rpartition("+rag:")[0] or model_ref)
    budget = model_context(model) - max_new_tokens
    messages, encoded, info = [], [], []
    for example in examples:
        started = time.perf_counter()
        try:
            prompt = retriever.prompt(list(example.messages), tokenizer, max_prompt_tokens=budget)
        except TuneryError as exc:
            raise EvaluationError(f"{example.location}: {exc.message}", code=exc.code, hint=exc.hint) from None
        messages.append(prompt.messages)
        encoded.append(prompt.prompt_ids)
        info.append({"retrieval_ms": round((time.perf_counter() - started) * 1000, 3),
                     "citations": prompt.citations(), "retrieved": len(prompt.retrieved),
                     "hit": retrieval_hit(example, [h.chunk for h in prompt.retrieved])})
    return messages, encoded, info


def retrieval_hit(example: TaskExample, chunks: list[dict]) -> bool | None:
    """Whether any retrieved chunk is from the expected source and holds the expected evidence;
    None when the row names neither."""
    source, evidence = example.source, example.evidence
    if source is None and evidence is None:
        return None
    for chunk in chunks:
        from_source = source is None or chunk["source"] == source or chunk["source"].endswith("/" + source)
        if from_source and (evidence is None or evidence in chunk["text"]):
            return True
    return False


def usage_summary(rows: list[dict], seed: int = 0) -> dict:
    """Median latency, prompt and answer tokens per row, and the retrieval hit rate with its interval."""

    from tunery.evaluation.statistics import bootstrap_mean

    def median(key: str):
        values = [row[key] for row in rows if row.get(key) is not None]
        return round(statistics.median(values), 3) if values else None

    hits = [float(row["retrieval"]["hit"]) for row in rows
            if row.get("retrieval") and row["retrieval"].get("hit") is not None]
    summary = {"median_latency_ms": median("latency_ms"), "median_prompt_tokens": median("prompt_tokens"),
               "mean_prompt_tokens": round(sum(r.get("prompt_tokens", 0) for r in rows) / max(1, len(rows)), 1),
               "median_completion_tokens": median("num_tokens"), "retrieval_hit_rate": None}
    if hits:
        interval = bootstrap_mean(hits, seed=seed)
        summary["retrieval_hit_rate"] = {"mean": interval.value, "low": interval.low, "high": interval.high,
                                         "n": len(hits)}
    return summary
