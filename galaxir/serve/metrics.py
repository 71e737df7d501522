"""Prometheus metrics of one server (its own registry, so several servers in a process,
as in the tests, keep separate counts): requests by model and status, request latency,
batch sizes of dynamic batching, requests in flight."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("galaxir_requests", "Inference and metadata requests answered",
                                ["model", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("galaxir_request_seconds", "Infer request latency (seconds)",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("galaxir_batch_size", "Requests' rows merged into one run",
                                    ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("galaxir_batch_requests", "Requests merged into one run",
                                        ["model"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.inflight = Gauge("galaxir_inflight_requests", "Infer requests being served",
                              registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
