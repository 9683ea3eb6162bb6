"""Counts for monitoring, read from the store: jobs by state, feedback by served model and rating.

Plain aggregate queries that run alike on SQLite and PostgreSQL; what to do with them (Prometheus
gauges, `tunery models show`) is the caller's business.
"""

from __future__ import annotations

from tunery.store.db import Store


def job_state_counts(store: Store) -> dict[str, int]:
    """Jobs per status (`queued`, `running`, `succeeded`, ...); an empty store gives {}."""
    return {row["status"]: int(row["n"]) for row in store.query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status")}


def feedback_counts(store: Store) -> dict[str, dict[str, int]]:
    """Per served model (the exact name or version that answered): thumbs up, thumbs down, corrections."""
    rows = store.query(
        "SELECT c.model AS model, f.rating AS rating, COUNT(*) AS n,"
        " SUM(CASE WHEN f.correction IS NOT NULL THEN 1 ELSE 0 END) AS corrected"
        " FROM feedback f JOIN completions c ON c.id = f.completion_id GROUP BY c.model, f.rating")
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        entry = counts.setdefault(row["model"], {"up": 0, "down": 0, "corrections": 0})
        entry["up" if int(row["rating"]) == 1 else "down"] += int(row["n"])
        entry["corrections"] += int(row["corrected"] or 0)
    return counts
