"""`python -m bench.platform`: what the job platform costs, against running `tunery train` by hand.

Three measurements, written to docs/benchmarks-platform.md:
1. create -> running: seconds from `jobs.create` returning to the job running, on an idle worker;
2. `jobs.list` (first page and deep pages) p50/p95 with N jobs in the store, SQLite and PostgreSQL;
3. overhead: wall time of a job (create -> succeeded, worker already idle) against `tunery train`
   on the same config in a fresh process, alternating, as a ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.platform", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="Base model for the training runs.")
    p.add_argument("--data", default=str(REPO / "examples" / "helpdesk" / "train.jsonl"), help="Training file.")
    p.add_argument("--steps", type=int, default=20, help="Optimizer steps per training run.")
    p.add_argument("--repeats", type=int, default=3, help="Runs per side for the overhead and latency.")
    p.add_argument("--jobs", type=int, default=10_000, help="Jobs in the store for the list timing.")
    p.add_argument("--postgres", default=os.environ.get("TUNERY_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/test"),
                   help="PostgreSQL URL for the list timing (a schema is made and dropped); '' skips it.")
    p.add_argument("--out", default=str(REPO / "docs" / "benchmarks-platform.md"), help="Report to write.")
    return p.parse_args(argv)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def fill_jobs(store, count: int, owners: int = 10) -> None:
    """`count` queued jobs spread over `owners` keys, inserted in batches."""
    from tunery.store.jobs import new_id
    from tunery.store.schema import jobs

    rows = [{"id": new_id("ftjob"), "owner": f"key{i % owners}", "model": "m", "training_file": "file-x",
             "seed": 1, "method_json": "{}", "tunery_json": "{}", "hyperparameters_json": "{}", "status": "queued",
             "created_at": int(time.time()), "result_files_json": "[]",
             "metadata_json": json.dumps({"batch": str(i % 7)})} for i in range(count)]
    for start in range(0, count, 1000):
        with store.transaction() as conn:
            conn.execute(jobs.insert(), rows[start:start + 1000])


def time_list(store, repeats: int = 200) -> dict:
    """Milliseconds per `jobs.list` as one key sees it: the first page, and a page deep in the list."""
    from tunery.platform import jobs as job_service
    from tunery.store.owners import Actor

    actor = Actor("key3")
    deep = job_service.list_jobs(store, actor, limit=1000)["data"][-1]["id"]
    result = {}
    for name, kwargs in (("first page", {}), ("deep page", {"after": deep}),
                         ("metadata filter", {"metadata": {"batch": "3"}})):
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            job_service.list_jobs(store, actor, limit=20, **kwargs)
            times.append((time.perf_counter() - started) * 1000)
        result[name] = {"p50_ms": round(statistics.median(times), 2), "p95_ms": round(percentile(times, 95), 2)}
    return result


@contextmanager
def backend_store(backend: str, postgres_url: str, folder: Path):
    from tunery.store import open_store

    if backend == "sqlite":
        store = open_store(folder / "list.db")
        yield store
        store.close()
        return
    import secrets

    import sqlalchemy as sa

    from tunery.store.db import database_url

    schema = f"bench_{secrets.token_hex(4)}"
    admin = sa.create_engine(database_url(postgres_url))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    store = open_store(postgres_url, schema=schema)
    try:
        yield store
    finally:
        store.close()
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def job_body(args, file_id: str) -> dict:
    return {"model": args.model, "training_file": file_id, "seed": 1,
            "tunery": {"train": {"max_steps": args.steps, "threads": 1}, "data": {"val_fraction": 0.0}}}


def measure_jobs(args, home: Path) -> dict:
    """create -> running latency and job wall time, with one idle `tunery worker`; `tunery train` beside it."""
    from tunery.config import dump_config, load_train_config
    from tunery.platform import jobs as job_service
    from tunery.platform.files import save_upload
    from tunery.store import open_store
    from tunery.store.owners import LOCAL_OWNER

    original = Path(os.environ.get("TUNERY_HOME") or Path.home() / ".tunery")
    home.mkdir(parents=True, exist_ok=True)
    (original / "models").mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(original / "models", target_is_directory=True)  # converted base models, reused
    env = dict(os.environ, TUNERY_HOME=str(home), OMP_NUM_THREADS="1")
    env.pop("TUNERY_DATABASE_URL", None)
    os.environ["TUNERY_HOME"] = str(home)
    subprocess.run([sys.executable, "-m", "tunery", "models", "prepare", args.model], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    store = open_store(home / "tunery.db")
    file = save_upload(store, LOCAL_OWNER, [Path(args.data).read_bytes()], filename="train.jsonl", purpose="fine-tune")
    worker = subprocess.Popen([sys.executable, "-m", "tunery", "worker", "--poll-s", "0.5"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latencies, job_walls, train_walls = [], [], []
    try:
        time.sleep(10)  # the worker is up and idle
        for repeat in range(args.repeats):
            started = time.perf_counter()
            job = job_service.create_job(store, LOCAL_OWNER, job_body(args, file["id"]))
            created = time.perf_counter()
            while job_service.get_job(store, LOCAL_OWNER, job["id"])["status"] == "queued":
                time.sleep(0.02)
            latencies.append(time.perf_counter() - created)
            while job_service.get_job(store, LOCAL_OWNER, job["id"])["status"] == "running":
                time.sleep(0.05)
            job_walls.append(time.perf_counter() - started)
            config = load_train_config(None, [f"base_model={args.model}", f"data.train={args.data}",
                                              f"train.max_steps={args.steps}", "train.threads=1", "train.seed=1",
                                              "data.val_fraction=0.0", f"name=direct-{repeat}"])
            config_path = home / f"direct-{repeat}.yaml"
            config_path.write_text(dump_config(config), encoding="utf-8")
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "tunery", "train", str(config_path), "--quiet"], env=env, check=True)
            train_walls.append(time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(120)
    return {"create_to_running_s": [round(x, 3) for x in latencies], "job_wall_s": [round(x, 2) for x in job_walls],
            "train_wall_s": [round(x, 2) for x in train_walls],
            "overhead": round(statistics.median(job_walls) / statistics.median(train_walls) - 1, 4)}


def write_report(path: Path, args, lists: dict, jobs: dict) -> None:
    lines = ["# Platform benchmark", "", f"Written by `python -m bench.platform` ({time.strftime('%Y-%m-%d')}; "
             f"{os.cpu_count()} CPUs, shared with other work while measured: read the ratios, not the seconds).", "",
             f"## jobs.list with {args.jobs} jobs in the store (20 per page, one key's view)", "",
             "| backend | page | p50 ms | p95 ms |", "|---|---|---|---|"]
    for backend, result in lists.items():
        for page, r in result.items():
            lines.append(f"| {backend} | {page} | {r['p50_ms']} | {r['p95_ms']} |")
    lines += ["", f"## A job against `tunery train` ({args.model}, {args.steps} steps, {args.repeats} runs each)", "",
              f"- create -> running on an idle worker (polling every 0.5 s): "
              f"median {statistics.median(jobs['create_to_running_s']):.2f} s, runs {jobs['create_to_running_s']}",
              f"- job wall time (create -> succeeded): {jobs['job_wall_s']} s",
              f"- `tunery train` in a fresh process: {jobs['train_wall_s']} s",
              f"- platform overhead (ratio of medians - 1): {jobs['overhead'] * 100:+.1f}%", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv=None) -> None:
    args = parse_args(argv)
    lists = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("sqlite", "postgresql"):
            if backend == "postgresql" and not args.postgres:
                continue
            with backend_store(backend, args.postgres, Path(tmp)) as store:
                fill_jobs(store, args.jobs)
                lists[backend] = time_list(store)
                print(backend, lists[backend], flush=True)
        jobs = measure_jobs(args, Path(tmp) / "home")
        print(jobs, flush=True)
    write_report(Path(args.out), args, lists, jobs)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
