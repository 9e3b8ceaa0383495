"""Prometheus metrics of the API: requests by endpoint and status, tokens, latency, time to
first token, and the engine's queue depth and batch size (read when scraped)."""

from __future__ import annotations

from openchat_cli.serve.engines.base import Engine


class Metrics:
    """The server's Prometheus registry (one per app, so tests can run several servers)."""

    def __init__(self, engine: Engine, model: str):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "openchat_requests", "HTTP requests to the API, by endpoint and status", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("openchat_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("openchat_generation_tokens", "Tokens generated", registry=r)
        buckets = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.latency = Histogram(
            "openchat_request_latency_seconds", "End-to-end request latency", ["endpoint"], buckets=buckets, registry=r
        )
        self.ttft = Histogram(
            "openchat_time_to_first_token_seconds",
            "Time from request to the first generated token",
            buckets=buckets,
            registry=r,
        )
        self.in_progress = Gauge("openchat_requests_in_progress", "Completion requests being served", registry=r)
        Gauge("openchat_queue_depth", "Sequences waiting to join the batch", registry=r).set_function(
            lambda: engine.stats().waiting
        )
        Gauge("openchat_running_sequences", "Sequences in the running batch", registry=r).set_function(
            lambda: engine.stats().running
        )
        info = Gauge("openchat_model_info", "The served model", ["model", "engine"], registry=r)
        info.labels(model=model, engine=engine.kind).set(1)

    ENDPOINTS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics"})

    def count(self, endpoint: str, status: int) -> None:
        # Unknown paths share one label: a scanner must not grow the metric without bound.
        if endpoint not in self.ENDPOINTS:
            endpoint = "/v1/models/{model}" if endpoint.startswith("/v1/models/") else "other"
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
