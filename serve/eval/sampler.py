"""Ask the served model one question: the Triton ensemble (gRPC/HTTP) or the OpenAI gateway.

Either way only the *answer* part comes back for grading: the ensemble's `answer_output`, the
gateway's `message.content` (never `reasoning_content`). Generations are streamed so the
progress bar can show tokens as they arrive; `on_tokens(n)` gets the tokens added since its
last call.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.client import Delta, GenerateError, GenerateRequest, ServerUnavailable, collect, stream_generate

EvalProtocol = Literal["grpc", "http", "openai"]
TokenCallback = Callable[[int], None]


@dataclass(frozen=True)
class Sampling:
    reasoning: Literal["on", "off"]
    max_tokens: int
    temperature: float
    top_p: float
    system_prompt: str  # what the reasoning switch is in the system turn (the gateway path sends it)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Sample:
    answer: str
    reasoning_chars: int
    output_tokens: int | None
    finish_reason: str | None
    seconds: float


class TritonSampler:
    """The nemo-trt ensemble; preprocessing injects the `detailed thinking on|off` system turn."""

    def __init__(self, url: str, protocol: Literal["grpc", "http"], timeout: float):
        self.url, self.protocol, self.timeout = url, protocol, timeout

    def identity(self) -> dict[str, Any]:
        from nemo_trt.serve.regress.runner import read_server

        server, _ = read_server(self.url, self.protocol)
        return {"via": "triton", "backend": server.backend, "engine_id": server.engine_id,
                "manifest_sha256": server.manifest_sha256, "triton_version": server.triton_version}

    def sample(self, user_prompt: str, sampling: Sampling, seed: int | None, on_tokens: TokenCallback) -> Sample:
        request = GenerateRequest(messages=[{"role": "user", "content": user_prompt}], reasoning=sampling.reasoning,
                                  max_tokens=sampling.max_tokens, temperature=sampling.temperature,
                                  top_p=None if sampling.greedy else sampling.top_p, seed=seed)
        start = time.perf_counter()
        result = collect(_counting(stream_generate(self.url, request, self.protocol, self.timeout), on_tokens),
                         request, start)
        return Sample(result.answer, len(result.reasoning), result.num_output_tokens, result.finish_reason,
                      time.perf_counter() - start)


def _counting(deltas: Iterator[Delta], on_tokens: TokenCallback) -> Iterator[Delta]:
    seen = 0
    for delta in deltas:
        if delta.num_output_tokens is not None and delta.num_output_tokens > seen:
            on_tokens(delta.num_output_tokens - seen)
            seen = delta.num_output_tokens
        yield delta


class OpenAISampler:
    """`/v1/chat/completions` of an OpenAI-compatible server (ours: `nemo-trt openai`), streamed."""

    def __init__(self, url: str, timeout: float, model: str | None = None, api_key: str | None = None):
        bare = url.split("://", 1)[-1].rstrip("/").removesuffix("/v1")
        self.base = f"{url.split('://', 1)[0]}://{bare}" if "://" in url else f"http://{bare}"
        self.timeout, self.model, self.api_key = timeout, model, api_key

    def _request(self, path: str, body: dict | None = None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base}{path}", data=None if body is None else json.dumps(body).encode(),
                                         headers=headers, method="GET" if body is None else "POST")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise GenerateError(f"{self.base}{path} answered HTTP {exc.code}: {detail[:500]}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ServerUnavailable(f"cannot reach the OpenAI API at {self.base}: {exc}",
                                    "start it with `nemo-trt openai` / `nemo-trt serve --openai-port` "
                                    "or pass the right --url") from None

    def _model(self) -> str:
        if self.model is None:
            with self._request("/v1/models") as response:
                models = json.loads(response.read()).get("data") or []
            if not models:
                raise NemoTrtError(f"{self.base}/v1/models lists no model", "check the gateway's log")
            self.model = str(models[0]["id"])
        return self.model

    def identity(self) -> dict[str, Any]:
        # system_fingerprint names the served engine (nemo-trt-<engine_id>); one token is enough to read it.
        with self._request("/v1/chat/completions", {"model": self._model(), "max_tokens": 1, "temperature": 0,
                                                    "messages": [{"role": "user", "content": "hi"}]}) as response:
            body = json.loads(response.read())
        return {"via": "openai", "model": self.model, "system_fingerprint": body.get("system_fingerprint")}

    def sample(self, user_prompt: str, sampling: Sampling, seed: int | None, on_tokens: TokenCallback) -> Sample:
        body: dict[str, Any] = {
            "model": self._model(), "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": sampling.system_prompt},
                         {"role": "user", "content": user_prompt}],
            "max_tokens": sampling.max_tokens, "temperature": sampling.temperature}
        if not sampling.greedy:
            body["top_p"] = sampling.top_p
        if seed is not None:
            body["seed"] = seed
        start = time.perf_counter()
        content: list[str] = []
        reasoning_chars = 0
        finish: str | None = None
        tokens: int | None = None
        with self._request("/v1/chat/completions", body) as response:
            for raw in response:
                line = raw.decode("utf-8", errors="replace").strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                event = json.loads(data)
                if "error" in event:
                    raise GenerateError(f"the OpenAI API failed mid-stream: {event['error']}")
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        content.append(delta["content"])
                        on_tokens(1)  # a chunk is about a token; usage below gives the exact count
                    if delta.get("reasoning_content"):
                        reasoning_chars += len(delta["reasoning_content"])
                        on_tokens(1)
                    finish = choice.get("finish_reason") or finish
                usage = event.get("usage")
                if usage:
                    tokens = int(usage.get("completion_tokens") or 0)
        return Sample("".join(content), reasoning_chars, tokens, finish, time.perf_counter() - start)


def make_sampler(url: str, protocol: EvalProtocol, timeout: float, model: str | None = None,
                 api_key: str | None = None) -> TritonSampler | OpenAISampler:
    if protocol == "openai":
        return OpenAISampler(url, timeout, model, api_key)
    return TritonSampler(url, protocol, timeout)
