"""The platform benchmark's pieces on a small store (no timing asserts): filling, list timing, percentiles."""

from bench.platform import fill_jobs, percentile, time_list
from tunery.platform import jobs as job_service
from tunery.store import open_store
from tunery.store.owners import Actor


def test_list_timing_runs_on_a_filled_store(tmp_path):
    store = open_store(tmp_path / "t.db")
    fill_jobs(store, 2500)
    assert len(job_service.list_jobs(store, Actor("key3"), limit=1000)["data"]) == 250
    result = time_list(store, repeats=3)
    assert set(result) == {"first page", "deep page", "metadata filter"}
    assert all(r["p95_ms"] >= r["p50_ms"] > 0 for r in result.values())


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 95) == 95 and percentile(values, 50) == 50 and percentile([7.0], 95) == 7.0
