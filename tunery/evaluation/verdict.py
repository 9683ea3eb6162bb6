"""The plain verdict that ends a comparison: which model wins on this data, by how much, at what cost.

"Wins" is the highest mean headline score (each row's metrics averaged) over the rows every model
answered; "by how much" is a paired bootstrap interval against the runner-up; "cost" is median
latency and prompt tokens per answer. Knows nothing of models or files.
"""

from __future__ import annotations

from tunery.evaluation.statistics import bootstrap_delta


def headline_scores(models) -> dict[str, dict[str, float]]:
    """label -> row id -> headline score, over the rows every model scored."""
    per_model = {m.label: {r["id"]: r["score"] for r in m.rows if r["score"] is not None} for m in models}
    shared = set.intersection(*(set(scores) for scores in per_model.values())) if per_model else set()
    return {label: {i: s for i, s in scores.items() if i in shared} for label, scores in per_model.items()}


def plain_verdict(models, seed: int = 0) -> dict:
    """{"winner", "runner_up", "means", "delta", "text"} for two or more evaluated models."""
    scores = headline_scores(models)
    ids = sorted(next(iter(scores.values()), {}))
    if len(models) < 2 or not ids:
        return {"winner": None, "text": "No verdict: the models share no scored example."}
    means = {label: sum(s[i] for i in ids) / len(ids) for label, s in scores.items()}
    ranked = sorted(models, key=lambda m: (-means[m.label], models.index(m)))
    winner, runner = ranked[0], ranked[1]
    interval = bootstrap_delta([scores[runner.label][i] for i in ids], [scores[winner.label][i] for i in ids],
                               seed=seed)
    clear = interval.low > 0
    text = (f"{winner.label} wins on this data: mean score {means[winner.label]:.3f} against "
            f"{means[runner.label]:.3f} for {runner.label}, the runner-up ({interval.value:+.3f}, 95% CI "
            f"[{interval.low:+.3f}, {interval.high:+.3f}] over {len(ids)} examples"
            + ("" if clear else "; the difference is within noise, so they tie") + "). "
            + cost_sentence(winner, runner))
    baseline = models[0]
    if baseline.label not in (winner.label, runner.label):
        text += f" The baseline {baseline.label} scores {means[baseline.label]:.3f}."
    hit = (winner.usage or {}).get("retrieval_hit_rate")
    if hit:
        text += f" Retrieval found the expected source for {hit['mean']:.0%} of {hit['n']} questions."
    return {"winner": winner.label, "runner_up": runner.label, "clear": clear, "means": means,
            "delta": interval.as_dict(), "n": len(ids), "text": text}


def cost_sentence(winner, runner) -> str:
    w, r = winner.usage or {}, runner.usage or {}
    if w.get("median_latency_ms") is None or r.get("median_latency_ms") is None:
        return ""
    ratio = w["median_latency_ms"] / r["median_latency_ms"] if r["median_latency_ms"] else float("nan")
    return (f"It answers in {w['median_latency_ms']:.0f} ms median ({ratio:.2f}x the runner-up) from "
            f"{w['median_prompt_tokens']:.0f} prompt tokens per answer (runner-up: {r['median_prompt_tokens']:.0f}).")
