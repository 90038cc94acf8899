"""Prometheus metrics of the gateway (GET /metrics), with NIM's names (anchors §4).

NIM serves these without a prefix and labels them per model; vLLM uses the same names
with `vllm:`. Dashboards and autoscalers written for NIM work unchanged:

| metric | type | meaning |
|---|---|---|
| num_requests_running | gauge | requests generating (first token received) |
| num_requests_waiting | gauge | requests accepted, no token yet (queued or in prefill) |
| num_request_max | gauge | the in-flight limit (`--max-inflight`; 0 = none) |
| prompt_tokens_total / generation_tokens_total | counter | tokens in / out |
| reasoning_tokens_total | counter | generated tokens inside `<think>` |
| time_to_first_token_seconds | histogram | arrival of the request -> first generated token |
| inter_token_latency_seconds | histogram | gap between consecutive token responses (vLLM's name) |
| time_per_output_token_seconds | histogram | per request: (e2e - ttft) / (tokens - 1) (NIM's name) |
| e2e_request_latency_seconds | histogram | arrival -> last token |
| request_prompt_tokens / request_generation_tokens | histogram | tokens per request |
| request_success_total{finished_reason} | counter | finished requests: stop, length, tool_calls, abort |
| request_failure_total{status} | counter | requests answered with an error status |
| thinking_budget_exhausted_total | counter | requests whose thought was closed at the budget |

One registry per application (no global state: several gateways can live in one process).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import PlatformCollector, ProcessCollector

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
TOKEN_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
                         0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_COUNT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 131072)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class GatewayMetrics:
    def __init__(self, model_name: str, max_inflight: int = 0):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        labels = ["model_name"]
        r = self.registry

        def one(metric):  # noqa: ANN001, ANN202 - the per-model child, looked up once
            return metric.labels(model_name=model_name)

        self.running = one(Gauge("num_requests_running", "Requests generating tokens", labels, registry=r))
        self.waiting = one(Gauge("num_requests_waiting", "Requests accepted and waiting for their first token",
                                 labels, registry=r))
        one(Gauge("num_request_max", "In-flight request limit (0 = none)", labels, registry=r)).set(max_inflight)
        self.prompt_tokens = one(Counter("prompt_tokens", "Prompt tokens processed", labels, registry=r))
        self.generation_tokens = one(Counter("generation_tokens", "Tokens generated", labels, registry=r))
        self.reasoning_tokens = one(Counter("reasoning_tokens", "Generated tokens inside <think>", labels, registry=r))
        self.ttft = one(Histogram("time_to_first_token_seconds", "Time to first token", labels,
                                  buckets=LATENCY_BUCKETS, registry=r))
        self.itl = one(Histogram("inter_token_latency_seconds", "Time between consecutive token responses",
                                 labels, buckets=TOKEN_LATENCY_BUCKETS, registry=r))
        self.tpot = one(Histogram("time_per_output_token_seconds", "Mean time per output token after the first",
                                  labels, buckets=TOKEN_LATENCY_BUCKETS, registry=r))
        self.e2e = one(Histogram("e2e_request_latency_seconds", "End-to-end request latency", labels,
                                 buckets=LATENCY_BUCKETS, registry=r))
        self.request_prompt = one(Histogram("request_prompt_tokens", "Prompt tokens per request", labels,
                                            buckets=TOKEN_COUNT_BUCKETS, registry=r))
        self.request_generation = one(Histogram("request_generation_tokens", "Generated tokens per request", labels,
                                                buckets=TOKEN_COUNT_BUCKETS, registry=r))
        self._success = Counter("request_success", "Finished requests", labels + ["finished_reason"], registry=r)
        self._failure = Counter("request_failure", "Requests answered with an error", labels + ["status"],
                                registry=r)
        self.budget_exhausted = one(Counter("thinking_budget_exhausted", "Thoughts closed at the thinking budget",
                                            labels, registry=r))
        self._model = model_name

    def finished(self, reason: str) -> None:
        self._success.labels(model_name=self._model, finished_reason=reason).inc()

    def failed(self, status: int) -> None:
        self._failure.labels(model_name=self._model, status=str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
