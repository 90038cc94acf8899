"""The autoscaling signal against a real /metrics scrape of our CPU tritonserver (tests/conftest.py reference_server).

The HPA's metric (nemo_trt.serve.k8s.render.adapter_rule) is
rate(nv_inference_request_duration_us{model=~"ensemble|ensemble_tokens"}) / 1e6 per pod: the mean number
of requests in flight, by Little's law, if and only if the ensemble's counter covers each request from
arrival to its last streamed response. Checked here: the series
exists with the labels the adapter rule matches, and its increase over a few concurrent requests
equals the time the clients spent waiting for them (server time, not wall time: no timed assertion).
The probe paths of the rendered pods answer 200 on the same server.
"""
from __future__ import annotations

import re
import threading
import time
import urllib.request

import pytest

from nemo_trt.serve.client import GenerateRequest, generate
from nemo_trt.serve.k8s.render import (ENSEMBLE, ENSEMBLES, HPA_SOURCE_SERIES, TRITON_LIVE, TRITON_READY,
                                       adapter_rule)

pytestmark = pytest.mark.slow


def scrape(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def counter(text: str, name: str, model: str) -> float:
    match = re.search(rf'^{name}{{model="{model}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name}{{model={model!r}}} not in the scrape"
    return float(match.group(1))


def test_hpa_metric_series_is_exported_with_the_matched_labels(reference_server):
    text = scrape(reference_server)
    assert f"# TYPE {HPA_SOURCE_SERIES} counter" in text
    rule = adapter_rule()
    matcher = re.search(r'model=~"([^"]+)"', rule.series_query)
    assert rule.series_query.startswith(HPA_SOURCE_SERIES + "{") and matcher
    assert matcher.group(1) in rule.metrics_query
    for model in ENSEMBLES:  # both client-facing ensembles are exported and matched
        counter(text, HPA_SOURCE_SERIES, model)
        assert re.fullmatch(matcher.group(1), model)
    assert not re.fullmatch(matcher.group(1), "postprocessing")
    assert re.fullmatch(rule.name.matches, HPA_SOURCE_SERIES)


def test_probe_paths_answer_on_the_served_ports(reference_server):
    for path in (TRITON_READY, TRITON_LIVE):
        with urllib.request.urlopen(reference_server.http_url + path, timeout=10) as response:
            assert response.status == 200, path


def test_ensemble_request_duration_counts_requests_in_flight(reference_server):
    url = reference_server.grpc_url
    before = scrape(reference_server)
    done0 = counter(before, "nv_inference_request_success", ENSEMBLE)
    busy0 = counter(before, HPA_SOURCE_SERIES, ENSEMBLE)
    waited: list[float] = []

    def one(i: int) -> None:
        started = time.perf_counter()
        generate(url, GenerateRequest(prompt=f"Count to {i + 3}.", max_tokens=12, temperature=0.0), stream=i % 2 == 0)
        waited.append(time.perf_counter() - started)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 30
    while True:  # counters are published when a request is released
        after = scrape(reference_server)
        if counter(after, "nv_inference_request_success", ENSEMBLE) >= done0 + 3 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert counter(after, "nv_inference_request_success", ENSEMBLE) == done0 + 3
    busy_s = (counter(after, HPA_SOURCE_SERIES, ENSEMBLE) - busy0) / 1e6
    client_s = sum(waited)
    # the server's count covers each stream end to end (a composing model's would cover only its execute call)
    assert 0.6 * client_s <= busy_s <= 1.02 * client_s, (busy_s, waited)
    # postprocessing (a composing model) counts only its execute calls, one per token response
    post_s = (counter(after, HPA_SOURCE_SERIES, "postprocessing")
              - counter(before, HPA_SOURCE_SERIES, "postprocessing")) / 1e6
    assert post_s < 0.5 * busy_s
