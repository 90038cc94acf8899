"""What the `preprocessing` model does to one request, as a pure function.

Input: the ensemble's request fields as Python values. Output: the tensors the
`tensorrt_llm` model gets (prompt ids, lengths, effective end id, stop/bad word lists,
effective sampling, stream flag). Every client mistake raises
PromptError with a message that goes back to the client as a Triton error.

Defaults (model-nemotron-super-49b-v1.md §10-§11): turns end with <|eot_id|> (128009)
and all three Llama-3 stop ids stop generation; with reasoning on and no sampling
given, temperature 0.6 / top_p 0.95; with reasoning off, greedy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from nemo_trt.model_facts import Reasoning, ServingFacts
from nemo_trt.serve.prompt import (
    PromptError,
    PromptRenderer,
    RenderedPrompt,
    decode_utf8,
    parse_messages,
    parse_reasoning,
)
from nemo_trt.serve.toolcall import ToolSpecError, parse_tools


@dataclass(frozen=True)
class PreprocessSettings:
    """Repository parameters of the preprocessing model (filled by the repository writer)."""

    max_input_len: int
    max_seq_len: int
    default_max_tokens: int
    default_reasoning: Reasoning = "on"


@dataclass
class RequestFields:
    """One request's inputs (None = not sent)."""

    text_input: bytes | str | None = None
    messages: bytes | str | list | None = None  # JSON chat, or parsed already (the OpenAI gateway)
    tools: bytes | str | None = None  # OpenAI `tools` JSON (rendered into the first user turn)
    continue_final: bool | None = None  # continue the final assistant message (no new turn)
    reasoning: bytes | str | None = None
    max_tokens: int | None = None
    stop_words: list[bytes | str] = field(default_factory=list)
    bad_words: list[bytes | str] = field(default_factory=list)
    end_id: int | None = None
    pad_id: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stream: bool | None = None
    exclude_input_in_output: bool | None = None
    beam_width: int | None = None
    num_return_sequences: int | None = None
    min_tokens: int | None = None
    min_length: int | None = None  # genai-perf's (old TensorRT-LLM) name for min_tokens
    seed: int | None = None
    random_seed: int | None = None  # older clients' name for seed
    # Accepted for compatibility with stock clients; only False is supported.
    unsupported_flags: dict[str, bool] = field(default_factory=dict)
    # Stock ensemble inputs this deployment cannot serve, by name, when a request sent them.
    unsupported_inputs: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int


@dataclass(frozen=True)
class PreparedRequest:
    input_ids: list[int]
    output_len: int
    end_id: int
    pad_id: int
    stop_words: np.ndarray  # [2, L] int32, TensorRT-LLM word-list format
    bad_words: np.ndarray  # [2, L] int32
    sampling: Sampling
    reasoning: Reasoning
    stream: bool
    min_tokens: int = 1  # TensorRT-LLM's default: the end id may come first
    seed: int | None = None  # None: the backend's own default

    @property
    def input_len(self) -> int:
        return len(self.input_ids)


def word_list(words: list[list[int]]) -> np.ndarray:
    """TensorRT-LLM word list: row 0 the concatenated ids (0-padded), row 1 the end
    offsets (-1-padded); shape [2, 0] when empty (tensorrtllm_backend preprocessing
    `_to_word_list_format`, re-implemented)."""
    words = [w for w in words if w]
    flat = [t for w in words for t in w]
    offsets = list(np.cumsum([len(w) for w in words])) if words else []
    result = np.zeros((2, len(flat)), dtype=np.int32)
    result[0, :] = flat
    result[1, :] = -1
    result[1, : len(offsets)] = offsets
    return result


# Stock TensorRT-LLM ensemble inputs (configs/trtllm/0.20.0-ensemble.yaml) that a nemo-trt
# deployment cannot serve, and why: a request that sends one gets this error, not a silent answer.
UNSUPPORTED_INPUTS = {
    "decoder_text_input": "encoder-decoder models only; Super-49B is decoder-only",
    "prompt_embedding_table": "prompt tuning needs an engine built with prompt tables (nemo-trt builds none)",
    "prompt_table_extra_id": "prompt tuning needs an engine built with prompt tables (nemo-trt builds none)",
    "prompt_vocab_size": "prompt tuning needs an engine built with prompt tables (nemo-trt builds none)",
    "embedding_bias_words": "embedding bias is not supported by this deployment yet; use bad_words to ban words",
    "embedding_bias_weights": "embedding bias is not supported by this deployment yet; use bad_words to ban words",
    "lora_task_id": "LoRA needs an engine built with the LoRA plugin (nemo-trt builds none)",
    "lora_weights": "LoRA needs an engine built with the LoRA plugin (nemo-trt builds none)",
    "lora_config": "LoRA needs an engine built with the LoRA plugin (nemo-trt builds none)",
    "guided_decoding_guide_type": "guided decoding is not configured on this deployment",
    "guided_decoding_guide": "guided decoding is not configured on this deployment",
}


def effective_sampling(reasoning: Reasoning, facts: ServingFacts, temperature: float | None,
                       top_p: float | None, top_k: int | None) -> Sampling:
    """No sampling field given: the mode's recommendation. Any given: those, neutral
    values for the rest (temperature 1, top_p 1, top_k 0 = off), like OpenAI servers."""
    if temperature is None and top_p is None and top_k is None:
        defaults = facts.sampling[reasoning]
        if defaults.greedy:
            return Sampling(0.0, 1.0, 1)
        return Sampling(float(defaults.temperature), float(defaults.top_p), int(defaults.top_k))
    if temperature is not None and not (temperature >= 0.0 and np.isfinite(temperature)):
        raise PromptError(f"temperature must be >= 0, got {temperature}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise PromptError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 0:
        raise PromptError(f"top_k must be >= 0, got {top_k}")
    t = 1.0 if temperature is None else float(temperature)
    k = 0 if top_k is None else int(top_k)
    if t == 0.0 and top_k is None:
        k = 1  # temperature 0 means greedy; top_k 1 says so to every sampler
    return Sampling(t, 1.0 if top_p is None else float(top_p), k)


class Preprocessor:
    def __init__(self, tokenizer: Tokenizer, facts: ServingFacts, settings: PreprocessSettings):
        self.renderer = PromptRenderer(tokenizer, facts)
        self._tokenizer = tokenizer  # special-token parsing on: stop words may name <|eom_id|>
        self.facts = facts
        self.settings = settings

    def _words(self, words: list[bytes | str], what: str) -> list[list[int]]:
        ids = []
        for word in words:
            text = decode_utf8(word, what)
            if text:
                ids.append(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return ids

    def render(self, fields: RequestFields) -> RenderedPrompt:
        """The request's checks and its prompt (what `prepare` and prompt counting share)."""
        s = self.settings
        for name, value in fields.unsupported_flags.items():
            if value:
                raise PromptError(f"{name}=true is not supported by this model repository; leave it unset or false")
        for name in fields.unsupported_inputs:
            raise PromptError(f"{name} is not supported: {UNSUPPORTED_INPUTS.get(name, 'not served here')}; "
                              "leave it out")
        if fields.seed is not None and fields.random_seed is not None and fields.seed != fields.random_seed:
            raise PromptError("seed and random_seed (its old name) disagree: send one of them")
        seed = fields.seed if fields.seed is not None else fields.random_seed
        if seed is not None and not 0 <= int(seed) < 2**64:
            raise PromptError(f"seed must be between 0 and 2**64 - 1, got {seed}")
        if fields.exclude_input_in_output is False:
            raise PromptError("exclude_input_in_output=false (echoing the prompt) is not supported: "
                              "outputs hold the generated text only")
        for name in ("beam_width", "num_return_sequences"):
            value = getattr(fields, name)
            if value is not None and value != 1:
                raise PromptError(f"{name}={value} is not supported: "
                                  "this deployment generates one sequence (beam width 1)")
        explicit = parse_reasoning(fields.reasoning, None) if fields.reasoning is not None else None
        text = fields.text_input
        if text is not None and decode_utf8(text, "text_input") == "" and fields.messages is not None:
            text = None  # an empty text_input beside messages (some clients always send it)
        if text is not None and fields.messages is not None:
            raise PromptError("send either text_input or messages, not both")
        tools = None
        if fields.tools is not None and decode_utf8(fields.tools, "tools").strip():
            try:
                tools = parse_tools(decode_utf8(fields.tools, "tools"))
            except ToolSpecError as exc:
                raise PromptError(str(exc)) from None
        continue_final = bool(fields.continue_final)
        if (tools or continue_final) and fields.messages is None:
            raise PromptError("tools and continue_final need a chat: send messages, not text_input")
        if fields.messages is not None:
            chat = parse_messages(fields.messages, continue_final=continue_final)
            rendered = self.renderer.render(chat, explicit, s.default_reasoning, tools=tools,
                                            continue_final=continue_final)
        elif text is not None:
            rendered = self.renderer.render_text(decode_utf8(text, "text_input"), explicit, s.default_reasoning)
        else:
            raise PromptError("no prompt: send text_input (a user prompt) or messages (a JSON chat)")
        return rendered

    def prepare(self, fields: RequestFields) -> PreparedRequest:
        s = self.settings
        rendered = self.render(fields)
        seed = fields.seed if fields.seed is not None else fields.random_seed
        n = len(rendered.ids)
        if n > s.max_input_len:
            raise PromptError(f"the prompt is {n} tokens, longer than this engine's max input length "
                              f"of {s.max_input_len}: shorten it")
        room = s.max_seq_len - n
        if fields.max_tokens is None:
            output_len = min(s.default_max_tokens, room)
            if output_len < 1:
                raise PromptError(f"the prompt is {n} tokens and leaves no room to generate within "
                                  f"max_seq_len {s.max_seq_len}: shorten it")
        else:
            output_len = int(fields.max_tokens)
            if output_len < 1:
                raise PromptError(f"max_tokens must be >= 1, got {output_len}")
            if output_len > room:
                raise PromptError(f"prompt ({n} tokens) + max_tokens ({output_len}) exceeds this engine's "
                                  f"max_seq_len of {s.max_seq_len}: ask for at most {max(room, 0)} tokens")
        if fields.min_tokens is not None and fields.min_length is not None and fields.min_tokens != fields.min_length:
            raise PromptError("min_tokens and min_length (its old name) disagree: send one of them")
        min_tokens = fields.min_tokens if fields.min_tokens is not None else fields.min_length
        if min_tokens is not None and not (0 <= min_tokens <= output_len):
            raise PromptError(f"min_tokens must be between 0 and max_tokens ({output_len}), got {min_tokens}")
        tokens = self.facts.tokens
        stop = [[i] for i in tokens.stop_ids] + self._words(list(fields.stop_words), "stop_words")
        return PreparedRequest(
            input_ids=rendered.ids,
            output_len=output_len,
            end_id=tokens.end_id if fields.end_id is None else int(fields.end_id),
            pad_id=tokens.pad_id if fields.pad_id is None else int(fields.pad_id),
            stop_words=word_list(stop),
            bad_words=word_list(self._words(list(fields.bad_words), "bad_words")),
            sampling=effective_sampling(rendered.reasoning, self.facts, fields.temperature, fields.top_p, fields.top_k),
            reasoning=rendered.reasoning,
            stream=bool(fields.stream),
            min_tokens=1 if min_tokens is None else int(min_tokens),
            seed=None if seed is None else int(seed),
        )


def parse_word_list(array: np.ndarray | None) -> list[list[int]]:
    """Inverse of `word_list` ([2, L] or [1, 2, L]); used by postprocessing for stop sequences."""
    if array is None:
        return []
    array = np.asarray(array).reshape(2, -1)
    ids, offsets = array[0].tolist(), [o for o in array[1].tolist() if o >= 0]
    words, start = [], 0
    for end in offsets:
        words.append(ids[start:end])
        start = end
    return words
