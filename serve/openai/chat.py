"""POST /v1/chat/completions: a chat request -> a GenerationPlan; Events -> the OpenAI answer.

Messages go to the ensemble as its `messages` JSON (the prompt is rendered inside Triton by
preprocessing, with user text never becoming special tokens): `developer` is a system
message, text content parts are joined, `tool` results and assistant `tool_calls` pass
as they are, `reasoning_content` of earlier turns is dropped (the template drops earlier
reasoning too). They are checked here with the same parser preprocessing uses, so a bad
chat is a 400 naming the message before Triton sees it.
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
from nemo_trt.serve.openai.protocol import ChatCompletionRequest, ChatMessageParam
from nemo_trt.serve.openai.reasoning import decide_mode, system_switch
from nemo_trt.serve.openai.serving import GatewayState, respond, sampling_into, upstream_error
from nemo_trt.serve.openai.tools import ParsedCall, plan_tools, tool_result_content
from nemo_trt.serve.openai.upstream import UpstreamError, UpstreamRequest
from nemo_trt.serve.prompt import PromptError, parse_messages


def _text(message: ChatMessageParam, i: int) -> str | None:
    content = message.content
    if content is None or isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise unsupported(f"messages[{i}].content[{j}]",
                              f"content parts of type {part.type!r} are not supported: this model reads text")
        parts.append(part.text)
    return "".join(parts)


def upstream_messages(messages: list[ChatMessageParam]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
        if role == "tool":
            out.append({"role": "tool", "content": tool_result_content(message.content)})
            continue
        item: dict[str, Any] = {"role": role, "content": _text(message, i)}
        if message.tool_calls:
            if role != "assistant":
                raise bad_request(f"messages[{i}]: only assistant messages carry tool_calls",
                                  f"messages[{i}].tool_calls")
            item["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                  for c in message.tool_calls]
        elif item["content"] is None:
            raise bad_request(f"messages[{i}].content is missing", f"messages[{i}].content")
        out.append(item)
    return out


class ChatService:
    def __init__(self, state: GatewayState):
        self.state = state

    async def plan(self, request: ChatCompletionRequest) -> tuple[GenerationPlan, str]:
        state = self.state
        deployment = await state.ensure_deployment()
        model = state.check_model(request.model)
        facts = state.facts
        if request.response_format and request.response_format.get("type", "text") != "text":
            raise unsupported("response_format", "only {\"type\": \"text\"} is supported: this deployment has no "
                              "guided decoding; describe the format in the prompt or use tools")
        if request.max_tokens is not None and request.max_completion_tokens is not None and \
                request.max_tokens != request.max_completion_tokens:
            raise bad_request("max_tokens and max_completion_tokens disagree: send one", "max_completion_tokens")
        max_tokens = request.max_completion_tokens or request.max_tokens
        if request.top_logprobs and not request.logprobs:
            raise bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        if request.logprobs:
            if not deployment.supports_logprobs:
                raise unsupported("logprobs", "this deployment does not return log probabilities (its ensemble "
                                  "has no output_log_probs output)")
            if request.top_logprobs:
                raise unsupported("top_logprobs", "the engine returns the chosen token's log probability only: "
                                  "send top_logprobs 0 or leave it out")
        messages = upstream_messages(request.messages)
        plan_tools_, validators = plan_tools(request, facts.tools)
        if plan_tools_.specs and not deployment.supports_tools:
            raise unsupported("tools", "this model repository's ensemble has no `tools` input: rewrite it with "
                              "`nemo-trt repo` (or `nemo-trt build`) from this version")
        budget_tokens = request.thinking_budget()
        if budget_tokens is not None and not deployment.supports_tools:
            raise unsupported("max_thinking_tokens", "this model repository's ensemble has no `continue_final` "
                              "input: rewrite it with this version of nemo-trt")
        try:
            parse_messages(messages)
        except PromptError as exc:
            raise bad_request(str(exc), "messages") from None
        explicit = request.chat_template_kwargs.reasoning() if request.chat_template_kwargs else None
        first = messages[0]
        mode = decide_mode(facts, explicit, system_switch(facts, first["role"], first.get("content")),
                           bool(plan_tools_.specs), deployment.default_reasoning)
        if plan_tools_.prefill and mode == "on":
            raise bad_request("tool_choice 'required' or a named function runs with reasoning off (the call "
                              "starts the answer): drop thinking, or use tool_choice 'auto'", "tool_choice")
        upstream = UpstreamRequest(messages=messages, reasoning=mode, tools=plan_tools_.tools_json,
                                   return_log_probs=bool(request.logprobs), request_id=uuid.uuid4().hex)
        sampling_into(request, upstream, deployment, max_tokens)
        reasoning_facts = facts.reasoning
        tool_facts = facts.tools
        plan = GenerationPlan(
            request=upstream, mode=mode, max_tokens=max_tokens, stop=upstream.stop_words,
            budget=ThinkingBudget(budget_tokens, reasoning_facts.open_tag, reasoning_facts.close_tag)
            if budget_tokens is not None else None,
            tools=plan_tools_, validators=validators, logprobs=bool(request.logprobs),
            client_stream=request.stream, open_tag=reasoning_facts.open_tag, close_tag=reasoning_facts.close_tag,
            call_open=tool_facts.call_open if tool_facts else "<TOOLCALL>",
            call_close=tool_facts.call_close if tool_facts else "</TOOLCALL>",
        )
        return plan, model

    async def create(self, request: ChatCompletionRequest, raw: Request, arrival: float):
        state = self.state
        plan, model = await self.plan(request)
        state.admit()
        generation = Generation(state.upstream, plan, state.deployment, state.tokenizer,  # type: ignore[arg-type]
                                state.metrics, arrival, state.config.request_timeout, state.prompt_counter)
        ident = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        fingerprint = state.deployment.fingerprint if state.deployment else None
        include_usage = bool(request.stream_options and request.stream_options.include_usage)

        def chunks():  # noqa: ANN202
            writer = ChatChunks(ident, created, model, fingerprint, bool(plan.tools.parse), include_usage)
            return writer.render, lambda: writer.finish(generation.outcome.finish_reason, generation.outcome.usage())

        return await respond(state, raw, generation, request.stream,
                             lambda: self._whole(generation, ident, created, model, fingerprint), chunks)

    async def _whole(self, generation: Generation, ident: str, created: int, model: str,
                     fingerprint: str | None) -> dict[str, Any]:
        reasoning, content, calls, logprobs = [], [], [], []
        try:
            async for event in generation.events():
                reasoning.append(event.reasoning)
                content.append(event.content)
                calls += event.calls
                logprobs += event.logprobs
        except UpstreamError as exc:
            raise upstream_error(exc, self.state.config.triton_url) from None
        outcome = generation.outcome
        text = "".join(content)
        thought = "".join(reasoning)
        message: dict[str, Any] = {"role": "assistant", "content": None if calls and not text.strip() else text,
                                   "reasoning_content": thought or None}
        if calls:
            message["tool_calls"] = [_tool_call(c) for c in calls]
        choice: dict[str, Any] = {"index": 0, "message": message,
                                  "logprobs": {"content": [_logprob(t, lp) for t, lp in logprobs]}
                                  if generation.plan.logprobs else None,
                                  "finish_reason": outcome.finish_reason}
        body: dict[str, Any] = {"id": ident, "object": "chat.completion", "created": created, "model": model,
                                "choices": [choice], "usage": outcome.usage()}
        if fingerprint:
            body["system_fingerprint"] = fingerprint
        return body


def _tool_call(call: ParsedCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _logprob(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8")), "top_logprobs": []}


class ChatChunks:
    """SSE chunks of one streamed chat completion, serialized without a model per chunk
    (the head is encoded once; tests check every chunk against ChatCompletionChunk)."""

    def __init__(self, ident: str, created: int, model: str, fingerprint: str | None, tools: bool,
                 include_usage: bool):
        head: dict[str, Any] = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
        if fingerprint:
            head["system_fingerprint"] = fingerprint
        encoded = json.dumps(head, ensure_ascii=False)[:-1]
        self._choice = "data: " + encoded + ',"choices":[{"index":0,"delta":'
        self._usage = "data: " + encoded + ',"choices":[],"usage":'
        self._role = {"role": "assistant", "content": None if tools else ""}
        self._include_usage = include_usage
        self._started = False

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None,
              logprobs: list[tuple[str, float]] | None = None) -> str:
        lp = "null" if logprobs is None else json.dumps({"content": [_logprob(t, v) for t, v in logprobs]},
                                                        ensure_ascii=False)
        reason = "null" if finish_reason is None else f'"{finish_reason}"'
        return (self._choice + json.dumps(delta, ensure_ascii=False) + ',"logprobs":' + lp +
                ',"finish_reason":' + reason + "}]}\n\n")

    def render(self, event: Event) -> list[str]:
        out = []
        if not self._started:
            self._started = True
            out.append(self.chunk(self._role))
        delta: dict[str, Any] = {}
        if event.reasoning:
            delta["reasoning_content"] = event.reasoning
        if event.content:
            delta["content"] = event.content
        if delta or event.logprobs:
            out.append(self.chunk(delta, logprobs=event.logprobs or None))
        for call in event.calls:
            out.append(self.chunk({"tool_calls": [{"index": call.index, "id": call.id, "type": "function",
                                                   "function": {"name": call.name, "arguments": ""}}]}))
            for fragment in call.fragments:
                out.append(self.chunk({"tool_calls": [{"index": call.index,
                                                       "function": {"arguments": fragment}}]}))
        return out

    def finish(self, finish_reason: str, usage: dict[str, Any]) -> list[str]:
        out = [] if self._started else [self.chunk(self._role)]
        out.append(self.chunk({}, finish_reason))
        if self._include_usage:
            out.append(self._usage + json.dumps(usage) + "}\n\n")
        return out
