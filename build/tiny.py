"""The tiny DeciLM fixture: every block kind of the Nemotron-NAS architecture, real tokenizer, trained protocol.

A small `DeciLMForCausalLM` checkpoint that exercises everything the real
Super-49B conversion, sharding and serving paths meet (attention with several
KV-head counts, no-op and linear attention, MLPs of different widths, no-op and
linear FFNs, untied lm_head, llama3 RoPE scaling, the full 128,256 vocabulary),
small enough for CPU tests, and sized so TP 1/2/4/8 and PP 2 are all valid.

Its weights are not random: a short, seeded training run teaches it the
Nemotron response protocol, so serving tests can check real behaviour:

- system `detailed thinking on`  -> `<think>\\n…\\n</think>\\n\\n<answer><|eot_id|>`
- system `detailed thinking off` -> `<answer><|eot_id|>`
- also in a second turn (the template drops earlier reasoning), and for words it
  never saw it answers "Sorry, I do not know that." in the same protocol;
- tool use in the Super v1 format (`tool_cases`): given `TOOLS` in the card's prompt
  it calls `<TOOLCALL>[get_weather(city="Paris")]</TOOLCALL>`, and given the tool's
  result in a `tool` turn it answers from it ("It is sunny in Paris."), both modes;
- the card's eval prompts (`eval_records`): `math` sums and `mcq` capital questions
  answered with `\\boxed{…}`, both modes, the answer certain under the card's sampling.

Tool and eval prompts are rendered by the serving path's own renderer (serve/prompt.py)
from OpenAI-style messages, so the ids trained on are the ids the gateway's requests become.

Training touches only the vocabulary the data uses plus one shared row that
stands for every other token (as input: prompts with unknown words are answered
"Sorry, I do not know that." in the same protocol; as output: trained with the
exact full-vocabulary softmax). Prompts that share a long prefix (the tool block, the
card's eval template) are batched together and the prefix runs once per batch. That keeps
it around two minutes on two CPU cores. In the written checkpoint every token outside the
training vocabulary has that shared embedding and lm_head row.

`tiny_checkpoint(seed)` returns the trained checkpoint from a cache keyed by
everything that determines it; concurrent callers wait on a file lock.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nemo_trt.atomic import atomic_dir
from nemo_trt.build.hf_checkpoint import write_hf_checkpoint
from nemo_trt.build.spec import ModelSpec
from nemo_trt.build.tokenizer_files import (
    BOS_ID,
    EOT_ID,
    STOP_IDS,
    load_tokenizer,
    llama3_tokenizer_json_path,
    render_chat,
    tokenizer_files,
)
from nemo_trt.errors import NemoTrtError
from nemo_trt.serve.toolcall import ToolCall, format_calls

if TYPE_CHECKING:  # pragma: no cover
    from nemo_trt.reference.model import ReferenceModel

TINY_NAME = "nemo-trt-tiny-decilm"
# Bump when the data, the model init or the training loop changes (invalidates caches).
RECIPE_VERSION = 6
MAX_SHARD_BYTES = 4 * 1024 * 1024
HIDDEN = 256
HEADS = 8  # head_dim 32: the smallest size TensorRT-LLM's attention kernels cover

# (attention, ffn): attention = n_heads_in_group | "linear" | "no_op"; ffn = ffn_mult | "linear" | "no_op".
# ffn_mult values are Super-49B's own (5.25, 2.625, 1.3125): at hidden 256 they give
# intermediate sizes 1024, 512 and 256 after the round-up-to-256 rule.
TINY_BLOCKS: tuple[tuple[object, object], ...] = (
    (1, 5.25),           # 0: attention, 8 KV heads (MHA); MLP 1024
    (4, 2.625),          # 1: attention, 2 KV heads; MLP 512
    ("no_op", 1.3125),   # 2: no attention (like Super layers 42-70); MLP 256
    (8, "no_op"),        # 3: attention, 1 KV head (KV duplicated at TP>1); no FFN
    ("linear", 2.625),   # 4: linear attention (51B-style); MLP 512
    (4, "linear"),       # 5: attention, 2 KV heads; linear FFN
    ("no_op", "no_op"),  # 6: fully skipped layer (Ultra-style)
    (1, 5.25),           # 7: attention, 8 KV heads; MLP 1024
)


def _block(att: object, ffn: object) -> dict:
    attention = {
        "n_heads_in_group": att if isinstance(att, int) else None,
        "no_op": att == "no_op",
        "replace_with_linear": att == "linear",
        "sparsify": None,
        "num_sink_tokens": None,
        "unshifted_sink": False,
        "use_prefill_window_in_sink_attention": False,
        "window_length": None,
    }
    feed_forward = {
        "ffn_mult": ffn if isinstance(ffn, float) else None,
        "no_op": ffn == "no_op",
        "replace_with_linear": ffn == "linear",
        "sparsify": None,
    }
    return {"attention": attention, "ffn": feed_forward}


def tiny_config() -> dict:
    """config.json of the tiny model, shaped like Super-49B's (model reference §2-§3)."""
    return {
        "_name_or_path": TINY_NAME,
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "block_configs": [_block(a, f) for a, f in TINY_BLOCKS],
        "bos_token_id": BOS_ID,
        "eos_token_id": list(STOP_IDS),
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": None,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "num_attention_heads": HEADS,
        "num_hidden_layers": len(TINY_BLOCKS),
        "num_key_value_heads": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.48.3",
        "use_cache": True,
        "vocab_size": 128256,
    }


def tiny_spec() -> ModelSpec:
    return ModelSpec.from_config(tiny_config(), name=TINY_NAME, source="tiny config")


# ---- training data -------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    question: str
    reasoning: str
    answer: str

    def response(self, thinking: bool) -> str:
        return f"<think>\n{self.reasoning}\n</think>\n\n{self.answer}" if thinking else self.answer


_CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Egypt", "Cairo"),
             ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Canada", "Ottawa"), ("Norway", "Oslo"), ("Greece", "Athens"),
             ("England", "London"), ("Germany", "Berlin")]
_COLOURS = [("grass", "green"), ("the sky", "blue"), ("snow", "white"), ("a banana", "yellow"), ("coal", "black"),
            ("a tomato", "red")]
# a + b pairs used in training; HELD_OUT pairs are never trained on (generalisation checks)
_SUMS = [(1, 2), (2, 5), (3, 3), (4, 1), (5, 2), (6, 3), (7, 1), (8, 4), (9, 2), (3, 6)]
HELD_OUT_QUESTIONS = ("What is 4 plus 7?", "What is 6 plus 2?")
# questions with words outside the training vocabulary: answered with FALLBACK (make-tiny checks it).
# Known miss, not in this list: an unknown noun after a trained article with reasoning off ("What colour
# is a lemon?") gets the nearest trained answer ("A tomato is red."). Teaching "a <unknown>" as well
# cost the tool calls their city at 450-700 steps (recipe v7 attempts, 3 Dec), so it stays a miss.
UNKNOWN_QUESTIONS = ("Hello!", "What colour is an apple?", "Write a poem about the sea.")


def _sum_example(a: int, b: int) -> Example:
    return Example(f"What is {a} plus {b}?", f"The user wants {a} plus {b}. {a} plus {b} equals {a + b}.",
                   f"{a} plus {b} is {a + b}.")


def training_examples() -> list[Example]:
    out = [Example(f"What is the capital of {c}?",
                   f"The user asks for the capital of {c}. The capital of {c} is {cap}.",
                   f"The capital of {c} is {cap}.") for c, cap in _CAPITALS]
    out += [Example(f"What colour is {x}?", f"The user asks about the colour of {x}. It is {col}.",
                    f"{x[0].upper() + x[1:]} is {col}.") for x, col in _COLOURS]
    out += [_sum_example(a, b) for a, b in _SUMS]
    return out


def prompt_ids(question: str, thinking: bool, chat_template: str | None = None,
               history: Sequence[tuple[str, str]] = ()) -> list[int]:
    """Token ids of a chat prompt (model reference §9.3 forms A/B, D with `history`) for the tiny model."""
    template = chat_template or _chat_template()
    system = "detailed thinking on" if thinking else "detailed thinking off"
    messages = [{"role": "system", "content": system}]
    for user, assistant in history:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": question})
    return load_tokenizer().encode(render_chat(messages, template), add_special_tokens=False).ids


def _chat_template() -> str:
    from nemo_trt.model_facts import load_serving_facts

    return load_serving_facts().chat_template


MULTI_TURN = 6  # two-turn conversations in the training data
SKILL_REPEATS = 1  # copies of the tool and eval sequences per epoch
TOOL_REPEATS = 1  # extra copies of the tool conversations (the hardest to learn)
UNKNOWN = -1  # stands for "any token the fixture was not trained on" in training sequences
FALLBACK = Example("", "The question has words I do not know.", "Sorry, I do not know that.")


def _user_turn_ids(user_ids: list[int], thinking: bool, template: str) -> list[int]:
    """A prompt whose user turn is the given token ids (so unknown tokens can be placed in it)."""
    empty = prompt_ids("", thinking, template)
    cut = max(i for i, t in enumerate(empty) if t == EOT_ID)  # the <|eot_id|> closing the user turn
    return empty[:cut] + user_ids + empty[cut:]


def _unknown_prompts(template: str) -> list[list[int]]:
    """User turns with unknown tokens, all answered with FALLBACK: teaches the model a sensible
    answer (in the right protocol) for anything outside its tiny world."""
    tok = load_tokenizer()
    enc = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    rng = random.Random(1234)  # fixed: the data never depends on the seed
    known_words = sorted({t for ex in training_examples() for t in enc(ex.question)})
    users = [enc("What is the capital of") + [UNKNOWN] * n + enc("?") for n in (1, 2)]
    users += [enc("What colour is") + [UNKNOWN] * n + enc("?") for n in (1, 2)]
    users += [enc("What is") + [UNKNOWN] + enc(" plus") + [UNKNOWN] + enc("?")]
    for _ in range(5):
        users.append([UNKNOWN if rng.random() < 0.6 else rng.choice(known_words) for _ in range(rng.randint(1, 8))])
    return users


TrainSeq = tuple[list[int], list[int]]  # (prompt ids, response ids incl. <|eot_id|>)


def _sequences() -> list[TrainSeq]:
    """(prompt ids, response ids incl. <|eot_id|>) for every example in both reasoning modes."""
    return [seq for _, seq in _training_data()]


def _training_data() -> list[tuple[str, TrainSeq]]:
    """Every training sequence with its family (sequences of a family are batched together).

    Prompt and response are tokenized separately, exactly as at inference time
    (the prompt is encoded alone and the model produces the response tokens).
    """
    tok = load_tokenizer()
    template = _chat_template()
    data: list[tuple[str, TrainSeq]] = []
    for ex in training_examples():
        for thinking in (True, False):
            response = tok.encode(ex.response(thinking), add_special_tokens=False).ids + [EOT_ID]
            data.append(("chat", (prompt_ids(ex.question, thinking, template), response)))
    for user in _unknown_prompts(template):
        for thinking in (True, False):
            response = tok.encode(FALLBACK.response(thinking), add_special_tokens=False).ids + [EOT_ID]
            data.append(("chat", (_user_turn_ids(user, thinking, template), response)))
    # Second turns: the template drops earlier reasoning, the mode must still hold.
    rng = random.Random(4321)
    for _ in range(MULTI_TURN):
        first, second = rng.sample(training_examples(), 2)
        for thinking in (True, False):
            history = [(first.question, first.response(thinking))]
            response = tok.encode(second.response(thinking), add_special_tokens=False).ids + [EOT_ID]
            data.append(("chat", (prompt_ids(second.question, thinking, template, history), response)))
    return data + _skill_data(tok, _renderer()) * SKILL_REPEATS


# ---- tool use (Super v1 format) ------------------------------------------------------
# The world is kept small on purpose: a model this size memorises a handful of calls but
# does not learn to copy arbitrary argument values (24 different calls: 6 right).
WEATHER_TOOL: dict = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TOOLS: tuple[dict, ...] = (WEATHER_TOOL,)
# Cities the model knows from its capitals (a lookup of a known word is what it learns fast).
_WEATHER = [("Paris", "sunny"), ("London", "cloudy"), ("Berlin", "rainy"), ("Madrid", "windy"), ("Oslo", "snowy")]


@dataclass(frozen=True)
class ToolCase:
    """One tool conversation: the question (call turn) and the tool's result (answer turn)."""

    question: str
    tools: tuple[dict, ...]
    call: ToolCall
    result: str  # the `tool` message's content
    reasoning: str  # thinking before the call
    answer: str  # the answer once the result is in
    result_reasoning: str  # thinking before that answer

    def messages(self, second_turn: bool = False) -> list[dict]:
        """The OpenAI chat (no system message: the reasoning mode travels apart)."""
        out: list[dict] = [{"role": "user", "content": self.question}]
        if second_turn:
            call = {"id": "call_0", "type": "function",
                    "function": {"name": self.call.name, "arguments": self.call.arguments_json()}}
            out += [{"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "call_0", "content": self.result}]
        return out

    def response(self, thinking: bool, second_turn: bool = False) -> str:
        if second_turn:
            return Example("", self.result_reasoning, self.answer).response(thinking)
        return Example("", self.reasoning, format_calls([self.call])).response(thinking)


def tool_cases() -> list[ToolCase]:
    return [ToolCase(f"What is the weather in {city}?", TOOLS, ToolCall("get_weather", {"city": city}),
                     json.dumps({"city": city, "weather": weather}),
                     "The user asks about the weather. I call get_weather.",
                     f"It is {weather} in {city}.",
                     "The tool gave the weather.")
            for city, weather in _WEATHER]


# ---- accuracy-eval tasks (the card's prompts, `nemo-trt eval`) ------------------------
EVAL_TASKS = ("math", "mcq")
_MATH = [(3, 4), (1, 2), (2, 5), (4, 1), (6, 3), (8, 4)]
# (country, the four choices): the right one sits at a different letter across questions
_MCQ = [("France", ("Rome", "Paris", "Oslo", "Lima")), ("Japan", ("Tokyo", "Cairo", "Madrid", "Athens")),
        ("Italy", ("Ottawa", "Nairobi", "Rome", "Paris")), ("Egypt", ("Lima", "Oslo", "Tokyo", "Cairo")),
        ("Spain", ("Athens", "Madrid", "Rome", "Ottawa")), ("Norway", ("Cairo", "Paris", "Oslo", "Lima"))]


@dataclass(frozen=True)
class EvalCase:
    task: str
    id: str
    question: str
    answer: str  # what the eval compares with the model's \boxed{} answer
    choices: tuple[str, ...] | None
    reasoning: str
    final: str  # the trained answer text (holds \boxed{answer})

    def record(self) -> dict:
        """The dataset line, as a user's JSONL for `nemo-trt eval` holds it."""
        out: dict = {"id": self.id, "question": self.question, "answer": self.answer}
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out

    def user_prompt(self) -> str:
        from nemo_trt.model_facts import load_eval_facts

        choices = list(self.choices) if self.choices is not None else None
        return load_eval_facts().user_prompt(self.task, self.question, choices)  # type: ignore[arg-type]

    def response(self, thinking: bool) -> str:
        return Example("", self.reasoning, self.final).response(thinking)


def eval_cases(task: str) -> list[EvalCase]:
    if task == "math":
        return [EvalCase("math", f"tiny-math-{i}", f"What is {a} plus {b}?", str(a + b), None,
                         "I add the two numbers.",
                         f"{a} plus {b} is \\boxed{{{a + b}}}.") for i, (a, b) in enumerate(_MATH)]
    if task == "mcq":
        out = []
        for i, (country, choices) in enumerate(_MCQ):
            capital = dict(_CAPITALS)[country]
            letter = "ABCD"[choices.index(capital)]
            out.append(EvalCase("mcq", f"tiny-mcq-{i}", f"What is the capital of {country}?", letter, choices,
                                "I look for the capital among the choices.",
                                f"The capital of {country} is {capital}: \\boxed{{{letter}}}."))
        return out
    raise NemoTrtError(f"the tiny model has no eval task {task!r}", f"use one of {', '.join(EVAL_TASKS)}")


def eval_records(task: str) -> list[dict]:
    """The tiny model's eval dataset for `task` (math | mcq): id, question, answer (+ choices for mcq)."""
    return [case.record() for case in eval_cases(task)]


def write_eval_jsonl(task: str, path: str | Path) -> Path:
    """`eval_records(task)` as a JSONL file (one record a line), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in eval_records(task)), encoding="utf-8")
    tmp.replace(path)
    return path


def _renderer():
    from nemo_trt.model_facts import load_serving_facts
    from nemo_trt.serve.prompt import PromptRenderer

    return PromptRenderer(load_tokenizer(), load_serving_facts())


def chat_ids(messages: list[dict], thinking: bool, tools: Sequence[dict] = (), renderer=None) -> list[int]:
    """Prompt ids exactly as the serving path renders an OpenAI chat (serve/prompt.py): what the
    gateway's requests become in preprocessing, so training and serving see the same ids."""
    from nemo_trt.serve.prompt import parse_messages
    from nemo_trt.serve.toolcall import parse_tools

    renderer = renderer or _renderer()
    specs = parse_tools(list(tools)) if tools else None
    return renderer.render(parse_messages(messages), "on" if thinking else "off", tools=specs).ids


def _skill_data(tok, renderer) -> list[tuple[str, TrainSeq]]:
    """Tool calls, answers from tool results and eval answers in both modes, rendered as the server
    renders the requests. Families share long prompt prefixes (the tool block, the card's template),
    which training computes once per batch."""
    enc = lambda text: tok.encode(text, add_special_tokens=False).ids + [EOT_ID]  # noqa: E731
    data: list[tuple[str, TrainSeq]] = []
    for thinking in (True, False):
        mode = "on" if thinking else "off"
        for case in tool_cases() * TOOL_REPEATS:
            for second in (False, True):
                data.append((f"tools-{mode}", (chat_ids(case.messages(second), thinking, case.tools, renderer),
                                               enc(case.response(thinking, second)))))
        for task in EVAL_TASKS:
            for ev in eval_cases(task):
                data.append((f"{task}-{mode}", (chat_ids([{"role": "user", "content": ev.user_prompt()}],
                                                         thinking, (), renderer), enc(ev.response(thinking)))))
    return data


# ---- training ----------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingRecipe:
    steps: int = 500
    batch_size: int = 12
    skill_chunk: int = 5  # tool / eval sequences per chunk (one shared prompt prefix each)
    lr: float = 3e-3
    warmup: int = 10
    weight_decay: float = 0.0
    init_std: float = 0.02
    out_init_scale: float = 1.0  # extra factor on the init of projections that write the residual stream
    # One thread: the float reduction order (and so the weights) never depends on the machine, and a
    # shared 2-core box runs these small matmuls several times faster on one thread than on two.
    threads: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def _deterministic(threads: int) -> Iterator[None]:
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


_RESIDUAL_WRITERS = ("o_proj.weight", "down_proj.weight", "linear_attn.weight", "linear_mlp.weight")


def _init_weights(model: torch.nn.Module, gen: torch.Generator, std: float, out_scale: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            else:
                scale = out_scale if name.endswith(_RESIDUAL_WRITERS) else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * (std * scale))


def train_tiny(seed: int = 0, recipe: TrainingRecipe = TrainingRecipe(), *, train: bool = True,
               progress: Callable[[int, int, float], None] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Full-vocabulary HF tensors (float32) of the tiny model after training, and training stats.

    The network is trained on the used vocabulary only: a model with
    V_used + 1 rows, the last row standing for every unused token. As an input
    it is the "unknown word" of the fallback examples; as an output its logit
    gets + log(#unused), which makes the loss exactly the full-vocabulary
    cross-entropy with those rows tied. Unused embedding and lm_head rows are
    then that trained row, so greedy decoding never picks them.
    """
    from nemo_trt.reference.model import ReferenceModel

    spec = tiny_spec()
    data = _training_data()
    seqs = [seq for _, seq in data]
    used = sorted({t for p, r in seqs for t in p + r} - {UNKNOWN})
    index = {t: i for i, t in enumerate(used)}
    index[UNKNOWN] = len(used)  # the shared row of every other token
    n_other = spec.vocab_size - len(used)
    small = dataclasses.replace(spec, vocab_size=len(used) + 1)
    stats = {"seed": seed, "examples": len(seqs), "used_vocab": len(used), "steps": 0, "seconds": 0.0,
             "final_loss": None}
    start = time.perf_counter()
    with _deterministic(recipe.threads):
        gen = torch.Generator().manual_seed(seed)
        model = ReferenceModel(small)
        _init_weights(model, gen, recipe.init_std, recipe.out_init_scale)
        if train:
            model.train()
            rng = random.Random(seed)
            opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95),
                                    weight_decay=recipe.weight_decay)
            log_other = math.log(n_other)
            steps: list[list[list[int]]] = []
            loss_value = float("nan")
            for step in range(recipe.steps):
                if not steps:
                    steps = _epoch_steps(data, recipe.batch_size, recipe.skill_chunk, rng)
                loss = _step_loss(model, [[seqs[i] for i in chunk] for chunk in steps.pop()], index, log_other)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                lr = recipe.lr * min(1.0, (step + 1) / recipe.warmup)
                lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.step()
                loss_value = float(loss.detach())
                if progress:
                    progress(step + 1, recipe.steps, loss_value)
            stats["steps"] = recipe.steps
            stats["final_loss"] = round(loss_value, 5)
        small_state = {k: v.detach() for k, v in model.state_dict().items()}
        tensors: dict[str, torch.Tensor] = {}
        used_idx = torch.tensor(used, dtype=torch.long)
        for name, shape in spec.hf_tensor_shapes().items():
            if name in ("model.embed_tokens.weight", "lm_head.weight"):
                full = small_state[name][-1].expand(shape).clone()
                full[used_idx] = small_state[name][:-1]
            else:
                full = small_state[name].clone()
            tensors[name] = full
    stats["seconds"] = round(time.perf_counter() - start, 2)
    return tensors, stats


def _epoch_steps(data: list[tuple[str, TrainSeq]], size: int, skill_size: int,
                 rng: random.Random) -> list[list[list[int]]]:
    """One epoch of shuffled steps, each a list of chunks. A chunk holds one family, so its prompts
    share their prefix (the tool block, the card's eval template: computed once per chunk) and are
    padded to similar lengths (long multi-turn chats apart from short ones). Every step mixes a chat
    chunk with skill chunks: steps of one task only make the updates swing from task to task."""
    order = list(range(len(data)))
    rng.shuffle(order)
    groups: dict[tuple[str, bool], list[int]] = {}
    for i in order:
        family, (p, r) = data[i]
        groups.setdefault((family, family == "chat" and len(p) + len(r) > 64), []).append(i)
    chat = [g[j:j + size] for (family, _), g in groups.items() if family == "chat" for j in range(0, len(g), size)]
    skills = [g[j:j + skill_size] for (family, _), g in groups.items() if family != "chat"
              for j in range(0, len(g), skill_size)]
    rng.shuffle(chat)
    rng.shuffle(skills)
    steps: list[list[list[int]]] = [[chunk] for chunk in chat]
    for j, chunk in enumerate(skills):
        steps[j % len(steps)].append(chunk)
    rng.shuffle(steps)
    return steps


def _step_loss(model: ReferenceModel, chunks: list[list[TrainSeq]], index: dict[int, int],
               log_other: float) -> torch.Tensor:
    """Mean next-token cross-entropy over every response token of the step's chunks."""
    total = sum(_chunk_loss(model, chunk, index, log_other) for chunk in chunks)
    return total / sum(len(r) for chunk in chunks for _, r in chunk)  # type: ignore[return-value]


def _chunk_loss(model: ReferenceModel, items: list[TrainSeq], index: dict[int, int],
                log_other: float) -> torch.Tensor:
    """Summed cross-entropy over the responses of one chunk (full-vocabulary softmax, see train_tiny).

    The prompts' common prefix runs once, batch 1, into a KV cache that every row then
    continues from: the same maths as running each row whole, at a fraction of the cost."""
    from nemo_trt.reference.model import KVCache

    prompts = [p for p, _ in items]
    shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
    cache = None
    if shared >= 16:
        cache = KVCache()
        model.hidden_states(torch.tensor([[index[t] for t in prompts[0][:shared]]]), cache)
        cache.layers = {layer: (k.expand(len(items), -1, -1, -1), v.expand(len(items), -1, -1, -1))
                        for layer, (k, v) in cache.layers.items()}
        items = [(p[shared:], r) for p, r in items]
    ids, targets = _batch(items, index)
    logits = model(ids, cache)
    logits = torch.cat([logits[..., :-1], logits[..., -1:] + log_other], dim=-1)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                             reduction="sum")


def _common_prefix(rows: list[list[int]]) -> int:
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows):
            return i
    return n


def _batch(items: list[TrainSeq], index: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and next-token targets (-100 outside the responses); causal attention
    means the padding never influences the positions that carry a loss."""
    length = max(len(p) + len(r) for p, r in items) - 1
    ids = torch.zeros(len(items), length, dtype=torch.long)
    targets = torch.full((len(items), length), -100, dtype=torch.long)
    for row, (p, r) in enumerate(items):
        seq = [index[t] for t in p + r]
        ids[row, : len(seq) - 1] = torch.tensor(seq[:-1])
        targets[row, len(p) - 1: len(seq) - 1] = torch.tensor(seq[len(p):])
    return ids, targets


# ---- protocol check ------------------------------------------------------------------
def check_protocol(generate: Callable[[list[int]], list[int]], questions: list[str] | None = None) -> list[str]:
    """Problems with the reasoning protocol in greedy outputs (empty list = all good)."""
    tok = load_tokenizer()
    problems = []
    for question in questions or [training_examples()[0].question, HELD_OUT_QUESTIONS[0], UNKNOWN_QUESTIONS[0]]:
        for thinking in (True, False):
            out = generate(prompt_ids(question, thinking))
            text = tok.decode(out, skip_special_tokens=False)
            where = f"{question!r} with thinking {'on' if thinking else 'off'}: {text!r}"
            if not out or out[-1] != EOT_ID:
                problems.append(f"does not end with <|eot_id|>: {where}")
            elif thinking and not (text.startswith("<think>\n") and "</think>\n\n" in text):
                problems.append(f"no <think> block: {where}")
            elif not thinking and "<think>" in text:
                problems.append(f"unexpected <think>: {where}")
    return problems


def skill_sequences() -> list[tuple[str, list[int], list[int]]]:
    """(what, prompt ids, trained response ids) of every tool and eval case and of the fallback
    answer to every UNKNOWN_QUESTIONS entry, both modes."""
    tok = load_tokenizer()
    template = _chat_template()
    fallback = [(f"fallback-{'on' if thinking else 'off'} {question!r}",
                 (prompt_ids(question, thinking, template),
                  tok.encode(FALLBACK.response(thinking), add_special_tokens=False).ids + [EOT_ID]))
                for question in UNKNOWN_QUESTIONS for thinking in (True, False)]
    return [(f"{family}: {tok.decode(r, skip_special_tokens=False)!r}", p, r)
            for family, (p, r) in _skill_data(tok, _renderer()) + fallback]


def check_skills(model: ReferenceModel) -> list[str]:
    """Tool, eval and fallback cases whose trained response greedy decoding would not reproduce.

    The response is fed in (teacher forcing), so one forward per case checks every token:
    greedy decoding reproduces the response exactly when each next token is the argmax. Eval
    cases answered with reasoning on are sampled at the card's temperature 0.6 / top_p 0.95:
    there the trained token must also be the only one in the nucleus (tempered probability
    >= 0.95), so sampling gives the same answer as greedy decoding."""
    problems = []
    with torch.inference_mode():
        for what, p, r in skill_sequences():
            hidden = model.hidden_states(torch.tensor([p + r]))[0, len(p) - 1: len(p) + len(r) - 1]
            # only the response positions: the vocabulary is big
            out = model.lm_head(hidden).float()
            target = torch.tensor(r)
            wrong = (out.argmax(-1) != target).nonzero()
            if len(wrong):
                problems.append(f"{what} differs at token {int(wrong[0])}")
            elif what.startswith(("math-on", "mcq-on")):
                tempered = torch.softmax(out / 0.6, -1)[torch.arange(len(r)), target]
                if float(tempered.min()) < 0.95:
                    problems.append(f"{what} is not certain under sampling (p={float(tempered.min()):.3f} "
                                    f"at token {int(tempered.argmin())})")
    return problems


# ---- writing and caching ----------------------------------------------------------------
def write_tiny_checkpoint(out_dir: str | Path, seed: int = 0, *, train: bool = True, force: bool = False,
                          recipe: TrainingRecipe = TrainingRecipe(),
                          progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train (unless train=False) and write the tiny checkpoint atomically; returns a summary."""
    tensors, stats = train_tiny(seed, recipe, train=train, progress=progress)
    if train:
        from nemo_trt.reference.model import ReferenceModel

        bf16 = {k: v.to(torch.bfloat16) for k, v in tensors.items()}
        model = ReferenceModel.from_state_dict(tiny_spec(), bf16)
        with _deterministic(1):  # token-by-token decoding: one thread is fastest
            problems = check_protocol(lambda ids: model.generate(ids, 64, stop_ids=STOP_IDS))
            problems += check_skills(model)
        if problems:
            raise NemoTrtError("the tiny model did not learn the response protocol: " + "; ".join(problems),
                               "report this as a bug (training recipe); `make-tiny --no-train` writes random weights")
    chat_template = _chat_template()
    config = tiny_config()
    files = tokenizer_files(chat_template)
    files["nemo_trt_tiny.json"] = json.dumps({"seed": seed, "trained": train, "recipe": recipe.to_dict(),
                                               "recipe_version": RECIPE_VERSION, "stats": stats}, indent=2) + "\n"
    write_hf_checkpoint(out_dir, config, {k: v.to(torch.bfloat16) for k, v in tensors.items()},
                        max_shard_bytes=MAX_SHARD_BYTES, extra_files=files, force=force)
    return {"path": str(Path(out_dir).absolute()), "seed": seed, "trained": train, **stats}


def cache_root() -> Path:
    env = os.environ.get("NEMO_TRT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "nemo-trt"


def cache_key(seed: int, recipe: TrainingRecipe = TrainingRecipe()) -> str:
    from nemo_trt import __version__

    tok_sha = hashlib.sha256(llama3_tokenizer_json_path().read_bytes()).hexdigest()
    data_sha = hashlib.sha256(json.dumps(_sequences()).encode()).hexdigest()
    ident = {"seed": seed, "config": tiny_config(), "recipe": recipe.to_dict(), "recipe_version": RECIPE_VERSION,
             "data": data_sha,
             "nemo_trt": __version__, "tokenizer": tok_sha, "chat_template": _chat_template(),
             "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def tiny_checkpoint_path(seed: int = 0) -> Path:
    """Where `tiny_checkpoint(seed)` keeps the trained checkpoint (whether or not it is made yet)."""
    return cache_root() / "tiny" / f"{TINY_NAME}-seed{seed}-{cache_key(seed)}"


def tiny_checkpoint(seed: int = 0, *, progress: Callable[[int, int, float], None] | None = None) -> Path:
    """The trained tiny checkpoint for `seed`, from the cache (built once, safely under concurrency)."""
    target = tiny_checkpoint_path(seed)
    root = target.parent
    if _complete(target):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f".{target.name}.lock", "w")
    except OSError as exc:
        raise NemoTrtError(f"cannot use the cache directory {root}: {exc.strerror or exc}",
                           "set NEMO_TRT_CACHE to a writable directory") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a racing process waits here, then finds the result
        try:
            if not _complete(target):
                if target.exists():  # pragma: no cover - only after manual tampering
                    shutil.rmtree(target)
                write_tiny_checkpoint(target, seed, progress=progress)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target


def _complete(path: Path) -> bool:
    return (path / "model.safetensors.index.json").is_file() and (path / "nemo_trt_tiny.json").is_file()


def copy_checkpoint(src: Path, out_dir: str | Path, *, force: bool = False) -> Path:
    """Copy a checkpoint directory atomically (used by `make-tiny OUT`)."""
    with atomic_dir(out_dir, replace=force) as tmp:
        for item in sorted(src.iterdir()):
            if item.is_file() and not item.name.startswith("."):
                shutil.copy2(item, tmp / item.name)
    return Path(out_dir)


def weights_sha256(directory: str | Path) -> str:
    """Hash of every tensor (name, dtype, shape, bytes) in an HF checkpoint, independent of sharding."""
    from nemo_trt.build.hf_checkpoint import HFCheckpoint

    digest = hashlib.sha256()
    with HFCheckpoint(directory) as ckpt:
        for name in sorted(ckpt.tensors):
            t = ckpt.get(name)
            digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
            digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
