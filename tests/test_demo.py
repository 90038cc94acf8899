"""`nemo-trt demo`: the README's first command, end to end on the tiny model through real Triton."""
from __future__ import annotations

import json

from click.testing import CliRunner

from nemo_trt.cli import cli


def test_demo_runs_the_whole_chain(tmp_path, tiny_checkpoint_dir):
    result = CliRunner().invoke(cli, ["demo", "--json", "--workdir", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert list(summary["stages"]) == ["plan", "make", "convert", "repository", "serve", "chat", "openai"]
    assert summary["stages"]["plan"]["tp"] == 2 and summary["stages"]["plan"]["profile"] == "h100x2"
    assert summary["stages"]["convert"]["tensors_checked"] > 0
    on, off = summary["chats"]
    assert on["reasoning_mode"] == "on" and on["reasoning"].strip() and on["answer"].strip()
    assert "<think>" not in on["answer"] and "</think>" not in on["answer"]
    assert off["reasoning_mode"] == "off" and off["reasoning"] == "" and off["answer"].strip()
    assert on["finish_reason"] == off["finish_reason"] == "stop"
    # the OpenAI API on the same server: reasoning apart from the answer, and the tool request answered
    chat = summary["openai"]["chat"]
    assert chat["reasoning_content"] == on["reasoning"].strip() and chat["content"] == on["answer"]
    assert chat["usage"]["completion_tokens_details"]["reasoning_tokens"] > 0
    # the tiny model learnt this very call (recipe v6): a real parsed OpenAI tool call
    tool = summary["openai"]["tool_call"]
    assert tool["finish_reason"] == "tool_calls" and tool["content"] is None, tool
    assert [(c["name"], json.loads(c["arguments"])) for c in tool["tool_calls"]] == [("get_weather", {"city": "Paris"})]


def test_demo_tool_request_is_one_the_tiny_model_learnt():
    from nemo_trt.build.tiny import TOOLS, tool_cases
    from nemo_trt.commands.demo import DEMO_TOOL, DEMO_TOOL_QUESTION

    assert DEMO_TOOL in TOOLS
    assert DEMO_TOOL_QUESTION in [c.question for c in tool_cases()]
