"""The model's facts: serving (configs/models/<name>/serving.yaml: chat template, reasoning, stop ids)
and accuracy evaluation (eval.yaml: the card's prompts and published scores)."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field

from nemo_trt.errors import NemoTrtError
from nemo_trt.resources import models_dir

DEFAULT_MODEL = "llama-3.3-nemotron-super-49b-v1"
Reasoning = Literal["on", "off"]


class TokenFacts(BaseModel):
    bos_id: int
    end_id: int
    pad_id: int
    stop_ids: list[int]


class ReasoningFacts(BaseModel):
    system_prompts: dict[Reasoning, str]
    default: Reasoning = "on"
    open_tag: str = "<think>"
    close_tag: str = "</think>"


class SamplingDefaults(BaseModel):
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class ToolFacts(BaseModel):
    """How tools, calls and results are written into the prompt (serving.yaml `tools`)."""

    default_reasoning: Reasoning = "off"
    instructions: str
    available: str  # holds `{functions}`: the JSON list of function definitions
    call_open: str = "<TOOLCALL>"
    call_close: str = "</TOOLCALL>"
    result_role: str = "tool"


class ServingFacts(BaseModel):
    name: str
    hf_id: str
    aliases: list[str] = Field(default_factory=list)
    tokens: TokenFacts
    reasoning: ReasoningFacts
    sampling: dict[Reasoning, SamplingDefaults]
    max_position_embeddings: int
    chat_template: str
    tools: ToolFacts | None = None

    def system_prompt(self, reasoning: Reasoning) -> str:
        return self.reasoning.system_prompts[reasoning]


def _model_dir_for(name: str) -> Path | None:
    base = models_dir()
    direct = base / name
    if (direct / "config.json").is_file():
        return direct
    for candidate in sorted(base.iterdir()):
        facts = candidate / "serving.yaml"
        if facts.is_file():
            data = yaml.safe_load(facts.read_text(encoding="utf-8"))
            if name.lower() in [a.lower() for a in data.get("aliases", [])] + [data["name"].lower()]:
                return candidate
    return None


def known_models() -> list[str]:
    return sorted(p.name for p in models_dir().iterdir() if (p / "config.json").is_file())


def resolve_model(name_or_path: str | Path | None) -> Path:
    """A built-in model name/alias or a checkpoint directory → directory holding config.json."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    path = Path(name_or_path)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.name.endswith(".json"):
        return path.parent
    found = _model_dir_for(str(name_or_path))
    if found is None:
        raise NemoTrtError(
            f"unknown model {str(name_or_path)!r}: not a built-in model and not a directory with config.json",
            f"use one of {', '.join(known_models())} or the path of a Hugging Face checkpoint",
        )
    return found


@lru_cache(maxsize=8)
def load_serving_facts(name: str = DEFAULT_MODEL) -> ServingFacts:
    directory = resolve_model(name)
    path = directory / "serving.yaml"
    if not path.is_file():
        path = models_dir() / DEFAULT_MODEL / "serving.yaml"
    return ServingFacts.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


EvalTask = Literal["math", "mcq", "exact"]


class CardScore(BaseModel):
    """A published pass@1 (percent) per reasoning mode."""

    task: EvalTask
    on: float | None = None
    off: float | None = None

    def for_mode(self, reasoning: Reasoning) -> float | None:
        return self.on if reasoning == "on" else self.off


class EvalFacts(BaseModel):
    card_version: str
    max_sequence_length: int
    card_runs: int
    templates: dict[EvalTask, str]
    card_scores: dict[str, CardScore]

    def user_prompt(self, task: EvalTask, question: str, choices: list[str] | None = None) -> str:
        """The user turn for one question, exactly as the card's template writes it."""
        fields = {"question": question}
        if task == "mcq":
            if not choices or len(choices) != 4:
                raise NemoTrtError(f"an mcq question needs exactly 4 choices, got {len(choices or [])}",
                                   "give `choices` as a list of four answers (A-D) in the dataset line")
            fields.update({f"option_{letter}": text for letter, text in zip("ABCD", choices, strict=True)})
        # str.format would trip over the literal `\boxed{}`: substitute the named fields only, in one
        # pass, so a question that itself contains "{option_A}" stays as written
        return re.sub(r"\{(question|option_[ABCD])\}", lambda m: fields.get(m[1], m[0]), self.templates[task])


@lru_cache(maxsize=8)
def load_eval_facts(name: str = DEFAULT_MODEL) -> EvalFacts:
    path = resolve_model(name) / "eval.yaml"
    if not path.is_file():
        path = models_dir() / DEFAULT_MODEL / "eval.yaml"
    return EvalFacts.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
