"""POST /v1/completions: a text prompt, answered with the raw generated text.

The prompt is one user turn of the chat template (the ensemble always renders the template:
Super v1 is a chat model), so `text` is what the model wrote in its turn, `<think>…</think>`
included when reasoning is on; `chat_template_kwargs.thinking` and the thinking budget work
as in chat. Batches of prompts, token-id prompts, `echo`, `suffix` and `best_of` are refused
with a 400 naming the field.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any

from starlette.requests import Request

from nemo_trt.serve.openai.budget import ThinkingBudget
from nemo_trt.serve.openai.errors import bad_request, unsupported
from nemo_trt.serve.openai.generation import Event, Generation, GenerationPlan
from nemo_trt.serve.openai.protocol import CompletionRequest
from nemo_trt.serve.openai.reasoning import decide_mode
from nemo_trt.serve.openai.serving import GatewayState, respond, sampling_into, upstream_error
from nemo_trt.serve.openai.upstream import UpstreamError, UpstreamRequest


def prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise unsupported("prompt", f"a batch of {len(prompt)} prompts is not supported: send one prompt per "
                          "request (requests are batched on the GPU anyway)")
    raise unsupported("prompt", "token-id prompts are not supported: send the prompt as text")


class CompletionService:
    def __init__(self, state: GatewayState):
        self.state = state

    async def plan(self, request: CompletionRequest) -> tuple[GenerationPlan, str]:
        state = self.state
        deployment = await state.ensure_deployment()
        model = state.check_model(request.model)
        facts = state.facts
        text = prompt_text(request.prompt)
        if not text:
            raise bad_request("prompt is empty", "prompt")
        if request.echo:
            raise unsupported("echo", "echo is not supported: the response holds the generated text only")
        if request.suffix:
            raise unsupported("suffix", "suffix (insertion) is not supported by this model")
        if request.best_of not in (None, 1):
            raise unsupported("best_of", f"best_of={request.best_of} is not supported: one sequence per request")
        if request.logprobs is not None:
            if not deployment.supports_logprobs:
                raise unsupported("logprobs", "this deployment does not return log probabilities (its ensemble "
                                  "has no output_log_probs output)")
            if request.logprobs > 0:
                raise unsupported("logprobs", "the engine returns the chosen token's log probability only: "
                                  "send logprobs 0")
        budget_tokens = request.thinking_budget()
        if budget_tokens is not None and not deployment.supports_tools:
            raise unsupported("max_thinking_tokens", "this model repository's ensemble has no `continue_final` "
                              "input: rewrite it with this version of nemo-trt")
        explicit = request.chat_template_kwargs.reasoning() if request.chat_template_kwargs else None
        mode = decide_mode(facts, explicit, None, False, deployment.default_reasoning)
        upstream = UpstreamRequest(messages=[{"role": "user", "content": text}], reasoning=mode,
                                   return_log_probs=request.logprobs is not None, request_id=uuid.uuid4().hex)
        sampling_into(request, upstream, deployment, request.max_tokens)
        r = facts.reasoning
        plan = GenerationPlan(
            request=upstream, mode=mode, max_tokens=request.max_tokens, stop=upstream.stop_words,
            budget=ThinkingBudget(budget_tokens, r.open_tag, r.close_tag) if budget_tokens is not None else None,
            logprobs=request.logprobs is not None, client_stream=request.stream, open_tag=r.open_tag,
            close_tag=r.close_tag)
        return plan, model

    async def create(self, request: CompletionRequest, raw: Request, arrival: float):
        state = self.state
        plan, model = await self.plan(request)
        state.admit()
        generation = Generation(state.upstream, plan, state.deployment, state.tokenizer,  # type: ignore[arg-type]
                                state.metrics, arrival, state.config.request_timeout, state.prompt_counter)
        ident = "cmpl-" + uuid.uuid4().hex
        created = int(time.time())
        fingerprint = state.deployment.fingerprint if state.deployment else None
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        def chunks():  # noqa: ANN202
            writer = CompletionChunks(ident, created, model, fingerprint, include_usage)
            return writer.render, lambda: writer.finish(generation.outcome.finish_reason, generation.outcome.usage())

        return await respond(state, raw, generation, request.stream,
                             lambda: self._whole(generation, ident, created, model, fingerprint), chunks)

    async def _whole(self, generation: Generation, ident: str, created: int, model: str,
                     fingerprint: str | None) -> dict[str, Any]:
        text, logprobs = [], []
        try:
            async for event in generation.events():
                text.append(event.text)
                logprobs += event.logprobs
        except UpstreamError as exc:
            raise upstream_error(exc, self.state.config.triton_url) from None
        outcome = generation.outcome
        choice = {"index": 0, "text": "".join(text),
                  "logprobs": _logprobs(logprobs, 0) if generation.plan.logprobs else None,
                  "finish_reason": outcome.finish_reason}
        body: dict[str, Any] = {"id": ident, "object": "text_completion", "created": created, "model": model,
                                "choices": [choice], "usage": outcome.usage()}
        if fingerprint:
            body["system_fingerprint"] = fingerprint
        return body


def _logprobs(entries: list[tuple[str, float]], offset: int) -> dict[str, Any]:
    offsets, position = [], offset
    for token, _ in entries:
        offsets.append(position)
        position += len(token)
    return {"tokens": [t for t, _ in entries], "token_logprobs": [v for _, v in entries],
            "top_logprobs": None, "text_offset": offsets}


class CompletionChunks:
    def __init__(self, ident: str, created: int, model: str, fingerprint: str | None, include_usage: bool):
        head: dict[str, Any] = {"id": ident, "object": "text_completion", "created": created, "model": model}
        if fingerprint:
            head["system_fingerprint"] = fingerprint
        encoded = json.dumps(head, ensure_ascii=False)[:-1]
        self._choice = "data: " + encoded + ',"choices":[{"index":0,"text":'
        self._usage = "data: " + encoded + ',"choices":[],"usage":'
        self._include_usage = include_usage
        self._offset = 0

    def chunk(self, text: str, finish_reason: str | None = None,
              logprobs: list[tuple[str, float]] | None = None) -> str:
        lp = "null"
        if logprobs is not None:
            lp = json.dumps(_logprobs(logprobs, self._offset), ensure_ascii=False)
        self._offset += len(text)
        reason = "null" if finish_reason is None else f'"{finish_reason}"'
        return (self._choice + json.dumps(text, ensure_ascii=False) + ',"logprobs":' + lp +
                ',"finish_reason":' + reason + "}]}\n\n")

    def render(self, event: Event) -> list[str]:
        if event.text or event.logprobs:
            return [self.chunk(event.text, logprobs=event.logprobs or None)]
        return []

    def finish(self, finish_reason: str, usage: dict[str, Any]) -> list[str]:
        out = [self.chunk("", finish_reason)]
        if self._include_usage:
            out.append(self._usage + json.dumps(usage) + "}\n\n")
        return out
