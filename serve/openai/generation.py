"""One request's generation: upstream legs through stop strings, reasoning split and tools.

    upstream deltas ─▶ StopMatcher ─▶ ReasoningSplitter ─▶ ToolCallStream ─▶ Events
     (text, counts)     (cut, hold)     (reasoning|answer)   (content|calls)

Usually one leg: one upstream generation. With a thinking budget that runs out inside the
thought, the first leg is cancelled and a second continues the closed thought (budget.py).
With a forced tool call, the one leg starts from the opened `<TOOLCALL>[`.

Chat and completions format the same Events (chat.py, completions.py), streamed or not.
Every upstream delta yields one Event, empty or not, so a caller can wait for the first
one to know the request was accepted before it commits to a 200.
"""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from nemo_trt.serve.openai.budget import ThinkingBudget
from nemo_trt.serve.openai.metrics import GatewayMetrics
from nemo_trt.serve.openai.prompt_length import PromptCounter
from nemo_trt.serve.openai.reasoning import TagScrubber, in_reasoning, reasoning_token_count
from nemo_trt.serve.openai.stops import StopMatcher
from nemo_trt.serve.openai.tools import ParsedCall, ToolCallStream, ToolPlan
from nemo_trt.serve.openai.upstream import Deployment, TritonUpstream, UpstreamDelta, UpstreamRequest
from nemo_trt.serve.reasoning import ReasoningSplitter, Split

THOUGHT = ("reasoning_start", "reasoning")


@dataclass
class Event:
    text: str = ""  # generated text after stop strings (what /v1/completions returns)
    reasoning: str = ""
    content: str = ""
    calls: list[ParsedCall] = field(default_factory=list)
    logprobs: list[tuple[str, float]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.text or self.reasoning or self.content or self.calls or self.logprobs)


@dataclass
class Outcome:
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    budget_exhausted: bool = False

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
                "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens}}


@dataclass
class GenerationPlan:
    request: UpstreamRequest  # the first leg (messages, mode, sampling, tools)
    mode: str  # "on" | "off"
    max_tokens: int | None = None  # the client's cap on generated tokens (reasoning included)
    stop: list[str] = field(default_factory=list)
    budget: ThinkingBudget | None = None
    tools: ToolPlan = ToolPlan()
    validators: dict = field(default_factory=dict)
    logprobs: bool = False
    client_stream: bool = False
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    call_open: str = "<TOOLCALL>"
    call_close: str = "</TOOLCALL>"


class Generation:
    def __init__(self, upstream: TritonUpstream, plan: GenerationPlan, deployment: Deployment,
                 tokenizer: Tokenizer | None = None, metrics: GatewayMetrics | None = None,
                 arrival: float | None = None, timeout: float | None = None,
                 prompt_counter: PromptCounter | None = None):
        self.upstream = upstream
        self.prompt_counter = prompt_counter
        self._prompt_len: asyncio.Future[int | None] | None = None
        self._local_prompt_len: int | None = None  # counted here, to check against preprocessing's
        self._count: asyncio.Handle | None = None  # the pending count (events)
        self._first: UpstreamRequest = plan.request
        self.plan = plan
        self.deployment = deployment
        self.tokenizer = tokenizer
        self.metrics = metrics
        self.timeout = timeout
        self.arrival = time.perf_counter() if arrival is None else arrival
        self.outcome = Outcome()
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.done = False
        self._splitter = ReasoningSplitter(plan.open_tag, plan.close_tag)
        self._stop = StopMatcher(plan.stop)
        self._tools = ToolCallStream(plan.validators, plan.call_open, plan.call_close, plan.tools.parallel,
                                     plan.tools.only) if plan.tools.parse else None
        self._reasoning: list[str] = []
        self._scrubber: TagScrubber | None = None  # after a forced end of thought
        if metrics is not None:
            metrics.waiting.inc()
        self._gauge = "waiting"

    # -- the pipeline -----------------------------------------------------------
    def _process(self, raw: str, final: bool = False) -> Event:
        split = self._splitter.feed(raw) if raw else Split()
        if final:
            split = split + self._splitter.finish()
        event = Event(text=raw, reasoning=split.reasoning)
        if split.reasoning:
            self._reasoning.append(split.reasoning)
        answer = split.answer
        if self._scrubber is not None:
            answer = self._scrubber.feed(answer) + (self._scrubber.finish() if final else "")
        if self._tools is not None:
            found = self._tools.feed(answer) if answer else None
            event.content = found.content if found else ""
            event.calls = list(found.calls) if found else []
            if final:
                tail = self._tools.finish()
                event.content += tail.content
                event.calls += tail.calls
        else:
            event.content = answer
        return event

    def _token_texts(self, delta: UpstreamDelta) -> list[tuple[str, float]]:
        if not delta.log_probs:
            return []
        ids = delta.token_ids or []
        out = []
        for i, logprob in enumerate(delta.log_probs):
            if self.tokenizer is not None and i < len(ids):
                token = self.tokenizer.decode([ids[i]], skip_special_tokens=False)
            else:
                token = delta.text if len(delta.log_probs) == 1 else ""
            out.append((token, float(logprob)))
        return out

    def _upstream_stream(self) -> bool:
        """Stream from Triton when the client streams, the budget needs watching, or reasoning
        tokens can only be counted per token (no tokenizer here)."""
        plan = self.plan
        return plan.client_stream or plan.budget is not None or (plan.mode == "on" and self.tokenizer is None)

    def _leg(self, base: UpstreamRequest, prefix: str | None, max_tokens: int | None, stream: bool) -> UpstreamRequest:
        messages = list(base.messages)
        continue_final = base.continue_final
        if prefix is not None:
            if continue_final:  # the first leg already opened the assistant turn
                messages[-1] = {**messages[-1], "content": messages[-1]["content"] + prefix}
            else:
                messages.append({"role": "assistant", "content": prefix})
            continue_final = True
        return dataclasses.replace(base, messages=messages, continue_final=continue_final, max_tokens=max_tokens,
                                   stream=stream)

    def _cap(self) -> int | None:
        return self.deployment.completion_cap(self.outcome.prompt_tokens or None, self.plan.max_tokens)

    # -- timing and gauges --------------------------------------------------------
    def _tokens_arrived(self, now: float) -> None:
        if self.first_token_at is None:
            self.first_token_at = now
            if self.metrics is not None:
                self.metrics.ttft.observe(now - self.arrival)
                self.metrics.waiting.dec()
                self.metrics.running.inc()
                self._gauge = "running"
        elif self.metrics is not None and self.last_token_at is not None:
            self.metrics.itl.observe(now - self.last_token_at)
        self.last_token_at = now

    def close(self, finish_reason: str | None) -> None:
        """Once per request (also when it failed or the client left): gauges and histograms."""
        if self.done:
            return
        self.done = True
        m = self.metrics
        if m is None:
            return
        (m.running if self._gauge == "running" else m.waiting).dec()
        o = self.outcome
        if finish_reason is None:
            return
        m.finished(finish_reason)
        now = time.perf_counter()
        m.e2e.observe((self.last_token_at or now) - self.arrival)
        m.prompt_tokens.inc(o.prompt_tokens)
        m.generation_tokens.inc(o.completion_tokens)
        m.reasoning_tokens.inc(o.reasoning_tokens)
        m.request_prompt.observe(o.prompt_tokens)
        m.request_generation.observe(o.completion_tokens)
        if self.first_token_at is not None and self.last_token_at is not None and o.completion_tokens > 1:
            m.tpot.observe((self.last_token_at - self.first_token_at) / (o.completion_tokens - 1))
        if o.budget_exhausted:
            m.budget_exhausted.inc()

    # -- run ---------------------------------------------------------------------
    async def events(self) -> AsyncGenerator[Event, None]:
        plan = self.plan
        stream = self._upstream_stream()
        first = dataclasses.replace(plan.request, stream=stream,
                                    want_ids=plan.request.want_ids or (not stream and self.tokenizer is not None))
        if plan.tools.prefill and self._tools is not None:
            self._tools.feed(plan.tools.prefill)  # the model continues the opened call
            first = self._leg(first, plan.tools.prefill, first.max_tokens, stream)
        leg: UpstreamRequest | None = first
        self._first = first
        # counted once the request is on its way (this runs at the first wait for Triton), so
        # that the count overlaps with the generation instead of delaying its start
        self._count = asyncio.get_running_loop().call_soon(self._start_prompt_length, first)
        try:
            async for event in self._legs(first, leg, stream):
                yield event
        finally:
            self._count.cancel()
            if self._prompt_len is not None and not self._prompt_len.done():
                self._prompt_len.cancel()

    def _start_prompt_length(self, first: UpstreamRequest) -> None:
        """The prompt length, where the ensemble's stream lacks it: counted here once the counter
        is trusted (prompt_length.py), else asked of preprocessing in a unary call of its own,
        now, so that it runs beside the generation instead of after its last token."""
        if self._count is None or self._count.cancelled():
            return
        self._count.cancel()  # once: also when called before its turn (_known_prompt_tokens)
        if self.outcome.prompt_tokens:  # the ensemble's stream already said it
            return
        counter = self.prompt_counter
        local = counter.count(first) if counter is not None else None
        if local is not None and counter is not None and counter.trusted:
            self.outcome.prompt_tokens = local
            return
        self._local_prompt_len = local
        self._prompt_len = asyncio.ensure_future(self.upstream.prompt_tokens(first)) \
            if hasattr(self.upstream, "prompt_tokens") else None

    async def _known_prompt_tokens(self) -> None:
        self._start_prompt_length(self._first)
        if not self.outcome.prompt_tokens and self._prompt_len is not None:
            served = await self._prompt_len
            if self._local_prompt_len is not None and self.prompt_counter is not None:
                self.prompt_counter.check(self._local_prompt_len, served)
            self.outcome.prompt_tokens = served or 0

    async def _legs(self, first: UpstreamRequest, leg: UpstreamRequest | None,
                    stream: bool) -> AsyncGenerator[Event, None]:
        plan, outcome = self.plan, self.outcome
        budget = plan.budget if plan.mode == "on" else None
        if budget is not None and budget.tokens == 0:
            # no thought at all: the turn starts with a closed, empty one
            outcome.budget_exhausted = True
            event = Event(text=budget.prefix(""))
            close = budget.close(self._splitter)
            event.reasoning = close.reasoning
            yield event
            leg = self._leg(first, budget.prefix(""), first.max_tokens, plan.client_stream)
            self._scrubber = TagScrubber([plan.close_tag, plan.open_tag])
            budget = None
        before = 0  # completion tokens of earlier legs
        while leg is not None:
            current, leg = leg, None
            leg_tokens = 0
            cut = False
            async with aclosing(self.upstream.generate(current, self.timeout)) as deltas:
                async for delta in deltas:
                    now = time.perf_counter()
                    if delta.num_output_tokens is not None:
                        leg_tokens = max(leg_tokens, delta.num_output_tokens)
                    elif delta.token_ids:
                        leg_tokens += len(delta.token_ids)
                    if not outcome.prompt_tokens and delta.num_input_tokens:
                        outcome.prompt_tokens = delta.num_input_tokens
                    total = before + leg_tokens
                    if total > outcome.completion_tokens:
                        self._tokens_arrived(now)
                    outcome.completion_tokens = total
                    state_before = self._splitter.state
                    event = self._process(self._stop.feed(delta.text))
                    if plan.logprobs:
                        event.logprobs = self._token_texts(delta)
                    if state_before in THOUGHT or self._splitter.state in THOUGHT:
                        outcome.reasoning_tokens = total
                    if not stream and delta.token_ids and self.tokenizer is not None and before == 0:
                        outcome.reasoning_tokens = reasoning_token_count(self.tokenizer, delta.token_ids,
                                                                         plan.close_tag, plan.open_tag)
                    yield event
                    if self._stop.stopped is not None:
                        break
                    if budget is not None and not delta.final and \
                            budget.exhausted(total, in_reasoning(self._splitter)):
                        cut = True
                        break
            before += leg_tokens
            outcome.completion_tokens = before
            if self._stop.stopped is not None:
                break
            if cut and budget is not None:
                outcome.budget_exhausted = True
                outcome.reasoning_tokens = before
                event = self._process(self._stop.finish())
                opened = self._splitter.state == "start"
                close = budget.close(self._splitter)
                event.reasoning += close.reasoning
                if close.reasoning:
                    self._reasoning.append(close.reasoning)
                event.text += (plan.open_tag + "\n" if opened else "") + "\n" + plan.close_tag + "\n\n"
                yield event
                await self._known_prompt_tokens()
                cap = self._cap()
                remaining = None if cap is None else cap - before
                if remaining is not None and remaining <= 0:
                    break
                leg = self._leg(first, budget.prefix("".join(self._reasoning)), remaining, plan.client_stream)
                self._scrubber = TagScrubber([plan.close_tag, plan.open_tag])
                budget = None
        tail = self._stop.finish()
        yield self._process(tail, final=True)
        await self._known_prompt_tokens()
        cap = self._cap()
        if self._tools is not None and self._tools.calls:
            outcome.finish_reason = "tool_calls"
        elif self._stop.stopped is not None:
            outcome.finish_reason = "stop"
        elif cap is not None and outcome.completion_tokens >= cap:
            outcome.finish_reason = "length"
        else:
            outcome.finish_reason = "stop"
