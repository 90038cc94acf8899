"""The tiny DeciLM fixture: structure, tokenizer files, chat template, trained protocol, cache, CLI."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from nemo_trt.build import tiny
from nemo_trt.build.hf_checkpoint import HFCheckpoint
from nemo_trt.build.spec import AttentionKind, FFNKind, ModelSpec
from nemo_trt.cli import main
from nemo_trt.model_facts import load_serving_facts

EOT = 128009


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Token-by-token decoding is many tiny ops: one thread is faster (and immune to a busy CPU)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint_dir):
    from nemo_trt.reference import ReferenceModel

    return ReferenceModel.from_hf(tiny_checkpoint_dir)


@pytest.fixture(scope="module")
def hf_tokenizer(tiny_checkpoint_dir):
    # The class tokenizer_config.json names. (AutoTokenizer would first load config.json, whose
    # `nemotron-nas` type needs the model's remote code, as for the real checkpoint.)
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(tiny_checkpoint_dir))


def test_every_block_kind_and_parallel_layouts(tiny_checkpoint_dir):
    spec = ModelSpec.from_path(tiny_checkpoint_dir)
    assert spec.is_deci and spec.vocab_size == 128256 and not spec.tie_word_embeddings
    assert spec.rope_scaling is not None and spec.rope_scaling.rope_type == "llama3"
    assert {layer.attention for layer in spec.layers} == set(AttentionKind)
    assert {layer.ffn for layer in spec.layers} == set(FFNKind)
    assert sorted(set(spec.kv_head_counts)) == [1, 2, 8]
    sizes = {layer.intermediate_size for layer in spec.layers if layer.ffn is FFNKind.MLP}
    assert sizes == {256, 512, 1024}
    assert any(layer.attention is AttentionKind.NO_OP and layer.ffn is FFNKind.NO_OP for layer in spec.layers)
    assert spec.head_dim == 32
    for tp in (1, 2, 4, 8):
        assert spec.num_attention_heads % tp == 0
        assert all(size % tp == 0 for size in sizes)
    # PP 2: equal halves, each with attention (so each stage holds a KV cache)
    assert spec.num_layers % 2 == 0
    half = spec.num_layers // 2
    assert any(layer.has_kv_cache for layer in spec.layers[:half])
    assert any(layer.has_kv_cache for layer in spec.layers[half:])
    cfg = json.loads((tiny_checkpoint_dir / "config.json").read_text())
    assert cfg["num_key_value_heads"] is None and cfg["intermediate_size"] is None
    assert cfg["block_configs"][6] == tiny._block("no_op", "no_op")


def test_sharded_bf16_safetensors_with_index(tiny_checkpoint_dir):
    with HFCheckpoint(tiny_checkpoint_dir) as ckpt:
        ckpt.validate()
        assert len(ckpt.shards) >= 3
        assert set(ckpt.tensors) == set(ckpt.spec.hf_tensor_shapes())
        assert {info.dtype for info in ckpt.tensors.values()} == {"BF16"}
    index = json.loads((tiny_checkpoint_dir / "model.safetensors.index.json").read_text())
    n = len(set(index["weight_map"].values()))
    assert sorted(p.name for p in tiny_checkpoint_dir.glob("*.safetensors")) == [
        f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def test_tokenizer_files(tiny_checkpoint_dir, hf_tokenizer):
    data = json.loads((tiny_checkpoint_dir / "tokenizer.json").read_text())
    added = {t["id"]: t["content"] for t in data["added_tokens"]}
    assert len(added) == 256 and min(added) == 128000
    assert added[128004] == "<|finetune_right_pad_id|>" and added[128005] == "<|step_id|>"
    assert added[128008] == "<|eom_id|>" and added[128010] == "<|python_tag|>"
    assert added[128009] == "<|eot_id|>" and added[128011] == "<|reserved_special_token_6|>"  # others keep their names
    cfg = json.loads((tiny_checkpoint_dir / "tokenizer_config.json").read_text())
    assert cfg["chat_template"] == load_serving_facts().chat_template
    assert (cfg["bos_token"], cfg["eos_token"], cfg["pad_token"]) == (
        "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>")
    assert cfg["added_tokens_decoder"]["128008"]["content"] == "<|eom_id|>"
    smap = json.loads((tiny_checkpoint_dir / "special_tokens_map.json").read_text())
    assert smap["eos_token"]["content"] == "<|eot_id|>"
    gen = json.loads((tiny_checkpoint_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [128001, 128008, 128009] and gen["bos_token_id"] == 128000
    tok = hf_tokenizer
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (128000, 128009, 128004)
    assert tok.convert_ids_to_tokens([128004, 128005, 128008, 128010]) == [
        "<|finetune_right_pad_id|>", "<|step_id|>", "<|eom_id|>", "<|python_tag|>"]
    # Llama-3.1+ tokenizers add BOS by default (serving must pass add_special_tokens=False)
    assert tok("Hello").input_ids == [128000, 9906]
    assert tok("Hello", add_special_tokens=False).input_ids == [9906]


H, E = "<|start_header_id|>", "<|end_header_id|>\n\n"


@pytest.mark.parametrize("form", ["A", "B", "C", "D"])
def test_chat_template_renders_reference_forms(hf_tokenizer, form):
    """Model reference §9.3, forms A-D, rendered by transformers from the checkpoint's tokenizer_config."""
    if form in "AB":
        mode = "on" if form == "A" else "off"
        msgs = [{"role": "system", "content": f"detailed thinking {mode}"}, {"role": "user", "content": "{prompt}"}]
        expected = (f"<|begin_of_text|>{H}system{E}detailed thinking {mode}<|eot_id|>{H}user{E}{{prompt}}<|eot_id|>"
                    f"{H}assistant{E}")
    elif form == "C":
        msgs = [{"role": "user", "content": "{prompt}"}]
        expected = f"<|begin_of_text|>{H}system{E}<|eot_id|>{H}user{E}{{prompt}}<|eot_id|>{H}assistant{E}"
    else:
        msgs = [{"role": "system", "content": "detailed thinking on"}, {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "<think>\n…reasoning…\n</think>\n\nA1"},
                {"role": "user", "content": "Q2"}]
        expected = (f"<|begin_of_text|>{H}system{E}detailed thinking on<|eot_id|>{H}user{E}Q1<|eot_id|>"
                    f"{H}assistant{E}A1<|eot_id|>{H}user{E}Q2<|eot_id|>{H}assistant{E}")
    assert hf_tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == expected
    from nemo_trt.build.tokenizer_files import render_chat

    assert render_chat(msgs, load_serving_facts().chat_template) == expected


def _generate(model, question: str, thinking: bool) -> tuple[list[int], str]:
    from nemo_trt.build.tokenizer_files import load_tokenizer

    out = model.generate(tiny.prompt_ids(question, thinking), 80, stop_ids=[128001, 128008, 128009])
    return out, load_tokenizer().decode(out, skip_special_tokens=False)


QUESTIONS = [tiny.training_examples()[0].question,  # a capital
             tiny.training_examples()[13].question,  # a colour
             *tiny.HELD_OUT_QUESTIONS,               # sums never trained on
             *tiny.UNKNOWN_QUESTIONS]                # words outside the training vocabulary


@pytest.mark.parametrize("question", QUESTIONS)
def test_trained_model_follows_reasoning_protocol(tiny_model, question):
    out, text = _generate(tiny_model, question, thinking=True)
    assert out[-1] == EOT, text
    assert text.startswith("<think>\n") and "</think>\n\n" in text, text
    answer = text.split("</think>\n\n", 1)[1].removesuffix("<|eot_id|>")
    assert answer.strip() and "<think>" not in answer, text
    out, text = _generate(tiny_model, question, thinking=False)
    assert out[-1] == EOT, text
    assert "<think>" not in text and "</think>" not in text and len(out) > 1, text


def test_trained_model_answers_training_prompts(tiny_model):
    """Training prompts come back with their trained answer (off mode: the answer only)."""
    examples = tiny.training_examples()
    hits = sum(_generate(tiny_model, ex.question, False)[1] == ex.answer + "<|eot_id|>" for ex in examples[::4])
    assert hits >= len(examples[::4]) // 2


@pytest.mark.parametrize("first,second", [(0, 5), (14, 22)])
def test_second_turn_keeps_the_reasoning_mode(tiny_model, first, second):
    """Form D prompts: the template drops earlier reasoning; the mode of the system turn still holds."""
    from nemo_trt.build.tokenizer_files import load_tokenizer

    a, b = tiny.training_examples()[first], tiny.training_examples()[second]
    for thinking in (True, False):
        ids = tiny.prompt_ids(b.question, thinking, history=[(a.question, a.response(thinking))])
        out = tiny_model.generate(ids, 80, stop_ids=[128001, 128008, 128009])
        text = load_tokenizer().decode(out, skip_special_tokens=False)
        assert out[-1] == EOT, text
        assert (text.startswith("<think>\n") and "</think>\n\n" in text) if thinking else "<think>" not in text, text


@pytest.mark.parametrize("question", tiny.UNKNOWN_QUESTIONS)
def test_unknown_words_get_the_fallback_answer(tiny_model, question):
    fallback = tiny.FALLBACK.answer + "<|eot_id|>"
    assert _generate(tiny_model, question, False)[1] == fallback
    assert _generate(tiny_model, question, True)[1] == tiny.FALLBACK.response(True) + "<|eot_id|>"


def test_training_is_deterministic_per_seed():
    recipe = tiny.TrainingRecipe(steps=3, batch_size=4)
    a, stats_a = tiny.train_tiny(0, recipe)
    b, _ = tiny.train_tiny(0, recipe)
    c, _ = tiny.train_tiny(1, recipe)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])
    assert stats_a["steps"] == 3 and stats_a["final_loss"] > 0
    # every token outside the training vocabulary shares one trained embedding and lm_head row
    used = set(t for p, r in tiny._sequences() for t in p + r)
    first, second = [i for i in range(1000, 2000) if i not in used][:2]
    for name in ("lm_head.weight", "model.embed_tokens.weight"):
        assert torch.equal(a[name][first], a[name][second])
        assert not torch.equal(a[name][first], a[name][128009])


def test_cached_checkpoint_matches_its_key(tiny_checkpoint_dir):
    meta = json.loads((tiny_checkpoint_dir / "nemo_trt_tiny.json").read_text())
    assert meta["trained"] and meta["seed"] == 0 and meta["recipe_version"] == tiny.RECIPE_VERSION
    assert tiny_checkpoint_dir.parent == tiny.cache_root() / "tiny"
    assert tiny.cache_key(0) in tiny_checkpoint_dir.name and tiny.cache_key(0) != tiny.cache_key(1)
    assert tiny.tiny_checkpoint(0) == tiny_checkpoint_dir


def test_cache_fill_is_locked_against_races(tmp_path, monkeypatch):
    monkeypatch.setenv("NEMO_TRT_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_write(out_dir, seed, progress=None, **_):
        calls.append(seed)
        time.sleep(0.3)  # long enough for the other threads to reach the lock
        with tiny.atomic_dir(out_dir) as tmp:
            (tmp / "model.safetensors.index.json").write_text("{}")
            (tmp / "nemo_trt_tiny.json").write_text("{}")

    monkeypatch.setattr(tiny, "write_tiny_checkpoint", fake_write)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(tiny.tiny_checkpoint(7))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [7] and len(set(results)) == 1 and results[0].is_dir()
    assert not [p for p in results[0].parent.iterdir() if p.name.endswith(".partial")]


def test_make_tiny_cli(tiny_checkpoint_dir, tmp_path, capsys):
    assert main(["make-tiny", "--help"]) == 0
    help_text = capsys.readouterr().out
    assert "Examples:" in help_text and "--no-train" in help_text and "--eval-data" in help_text

    out = tmp_path / "tiny"
    assert main(["make-tiny", str(out), "--json", "--eval-data", str(tmp_path / "eval")]) == 0
    summary = json.loads(capsys.readouterr().out)
    for task in ("math", "mcq"):
        lines = Path(summary["eval_data"][task]).read_text().splitlines()
        assert [json.loads(line) for line in lines] == tiny.eval_records(task)
    assert summary["trained"] and summary["cache"] == str(tiny_checkpoint_dir)
    assert summary["weights_sha256"] == tiny.weights_sha256(tiny_checkpoint_dir)
    assert "tokenizer.json" in summary["files"] and "model.safetensors.index.json" in summary["files"]

    assert main(["make-tiny", str(out)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert main(["make-tiny", str(out), "--no-train", "--seed", "3", "--force", "--json"]) == 0
    random_summary = json.loads(capsys.readouterr().out)
    assert not random_summary["trained"] and random_summary["weights_sha256"] != summary["weights_sha256"]
    HFCheckpoint(out).validate()
    assert not [p for p in tmp_path.rglob(".*")]


# ---- recipe v6: tool use and the eval tasks, prompts rendered by the serving path ----------------
def test_tool_and_eval_cases_are_reproduced_greedily(tiny_model):
    """Every tool call, answer from a tool result and eval answer, both modes (teacher-forced argmax
    equals greedy decoding; eval answers with reasoning on also hold under the card's sampling)."""
    assert tiny.check_skills(tiny_model) == []


@pytest.mark.parametrize("thinking", [False, True])
def test_tool_call_then_answer_from_the_result(tiny_model, thinking):
    from nemo_trt.build.tokenizer_files import load_tokenizer
    from nemo_trt.serve.toolcall import parse_calls

    case = next(c for c in tiny.tool_cases() if c.question == "What is the weather in Paris?")
    text = load_tokenizer().decode(tiny_model.generate(tiny.chat_ids(case.messages(), thinking, case.tools), 80,
                                                       stop_ids=[128001, 128008, 128009]), skip_special_tokens=False)
    assert text == case.response(thinking) + "<|eot_id|>"
    body = text.split("<TOOLCALL>", 1)[1].split("</TOOLCALL>", 1)[0]
    assert parse_calls(body) == [case.call] and case.call.arguments == {"city": "Paris"}
    assert text.startswith(f"<think>\n{case.reasoning}\n</think>\n\n") if thinking else text.startswith("<TOOLCALL>[")
    out = tiny_model.generate(tiny.chat_ids(case.messages(second_turn=True), thinking, case.tools), 80,
                              stop_ids=[128001, 128008, 128009])
    assert load_tokenizer().decode(out, skip_special_tokens=False) == \
        case.response(thinking, second_turn=True) + "<|eot_id|>"
    assert case.answer == "It is sunny in Paris."


def test_tool_prompts_are_the_servers(tiny_model):
    """The training prompts are what preprocessing renders for the gateway's request (same ids)."""
    from nemo_trt.model_facts import load_serving_facts
    from nemo_trt.serve.prompt import PromptRenderer, parse_messages
    from nemo_trt.serve.toolcall import parse_tools

    case = tiny.tool_cases()[0]
    renderer = PromptRenderer.from_dir(tiny.tiny_checkpoint_path(0), load_serving_facts())
    ids = renderer.render(parse_messages(json.dumps(case.messages(True))), "on",
                          tools=parse_tools(json.dumps(list(case.tools)))).ids
    assert ids == tiny.chat_ids(case.messages(True), True, case.tools)
    text = renderer._tokenizer.decode(ids, skip_special_tokens=False)
    assert "<AVAILABLE_TOOLS>[{\"name\": \"get_weather\"" in text and '<TOOLCALL>[get_weather(city="Paris")]' in text
    assert "<|start_header_id|>tool<|end_header_id|>" in text


def test_eval_records_and_jsonl(tmp_path):
    from nemo_trt.model_facts import load_eval_facts

    math_records, mcq_records = tiny.eval_records("math"), tiny.eval_records("mcq")
    assert math_records[0] == {"id": "tiny-math-0", "question": "What is 3 plus 4?", "answer": "7"}
    assert all(set(r) == {"id", "question", "answer"} for r in math_records)
    assert all(len(r["choices"]) == 4 and r["answer"] in "ABCD" for r in mcq_records)
    assert {r["answer"] for r in mcq_records} == set("ABCD")  # the right choice moves around
    assert len({r["id"] for r in math_records + mcq_records}) == len(math_records) + len(mcq_records)
    for task, records in (("math", math_records), ("mcq", mcq_records)):
        path = tiny.write_eval_jsonl(task, tmp_path / f"{task}.jsonl")
        assert [json.loads(line) for line in path.read_text().splitlines()] == records
    # the trained answers box exactly the record's answer, after the card's own prompt
    for case in tiny.eval_cases("math") + tiny.eval_cases("mcq"):
        assert f"\\boxed{{{case.answer}}}" in case.response(True).split("</think>")[1]
        assert case.user_prompt() == load_eval_facts().user_prompt(case.task, case.question,  # type: ignore[arg-type]
                                                                   list(case.choices) if case.choices else None)
    with pytest.raises(tiny.NemoTrtError, match="math, mcq"):
        tiny.eval_records("poetry")
