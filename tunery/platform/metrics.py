"""Server metrics in Prometheus format: requests, tokens, latency histograms, errors, queue, jobs, feedback.

Counters and histograms are updated as requests run; queue depth, job states and feedback per model
version are read when `/metrics` is scraped (from the engine and the store), so several servers over
one store report the same job and feedback numbers. Each server has its own registry (no global
state). Knows nothing about HTTP routes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from tunery.store.db import Store
from tunery.store.stats import feedback_counts, job_state_counts

TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TOKEN_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    """The registry of one server and the instruments the request path updates."""

    def __init__(self, store: Store, engine=None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("tunery_requests", "Completion requests served, by model (the exact version that "
                                "answered).", ["model"], registry=self.registry)
        self.tokens = Counter("tunery_tokens", "Tokens processed, by model and kind (prompt or completion).",
                              ["model", "kind"], registry=self.registry)
        self.ttft = Histogram("tunery_time_to_first_token_seconds", "Time from the request to its first token.",
                              ["model"], buckets=TTFT_BUCKETS_S, registry=self.registry)
        self.per_token = Histogram("tunery_time_per_output_token_seconds", "Mean time between output tokens "
                                   "after the first, per request.", ["model"], buckets=TOKEN_BUCKETS_S,
                                   registry=self.registry)
        self.errors = Counter("tunery_errors", "Error responses, by HTTP status and error code.",
                              ["status", "code"], registry=self.registry)
        self.registry.register(_StoreCollector(store, engine))

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class RequestTimer:
    """One request's timing: started, first token, tokens; `finish` records it all once."""

    metrics: ServerMetrics | None
    model: str
    started_s: float = field(default_factory=time.monotonic)
    first_token_s: float | None = None

    def token(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.monotonic()
            if self.metrics is not None:
                self.metrics.ttft.labels(self.model).observe(self.first_token_s - self.started_s)

    def finish(self, prompt_tokens: int, completion_tokens: int) -> None:
        if self.metrics is None:
            return
        m = self.metrics
        m.requests.labels(self.model).inc()
        m.tokens.labels(self.model, "prompt").inc(prompt_tokens)
        m.tokens.labels(self.model, "completion").inc(completion_tokens)
        if self.first_token_s is not None and completion_tokens > 1:
            m.per_token.labels(self.model).observe((time.monotonic() - self.first_token_s) / (completion_tokens - 1))


class _StoreCollector:
    """Gauges read at scrape time: the engine's queue, jobs by state, feedback per model version."""

    def __init__(self, store: Store, engine):
        self.store, self.engine = store, engine

    def describe(self):
        return []

    def collect(self):
        if self.engine is not None:
            queue = GaugeMetricFamily("tunery_queue_depth", "Requests waiting for a decode slot.")
            queue.add_metric([], getattr(self.engine, "num_waiting", 0))
            yield queue
            running = GaugeMetricFamily("tunery_requests_running", "Requests being decoded now.")
            running.add_metric([], getattr(self.engine, "num_running", 0))
            yield running
        jobs = GaugeMetricFamily("tunery_jobs", "Fine-tuning jobs in the store, by state.", labels=["state"])
        for state, count in sorted(job_state_counts(self.store).items()):
            jobs.add_metric([state], count)
        yield jobs
        feedback = GaugeMetricFamily("tunery_feedback", "Feedback given, by model version and rating "
                                     "(up, down, corrections).", labels=["model", "rating"])
        down_rate = GaugeMetricFamily("tunery_thumbs_down_ratio", "Share of rated answers rated down, by model "
                                      "version.", labels=["model"])
        for model, counts in sorted(feedback_counts(self.store).items()):
            for rating, count in counts.items():
                feedback.add_metric([model, rating], count)
            rated = counts["up"] + counts["down"]
            down_rate.add_metric([model], counts["down"] / rated if rated else 0.0)
        yield feedback
        yield down_rate
