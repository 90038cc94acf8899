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
    tool = summary["openai"]["tool_call"]
    assert tool["finish_reason"] in ("tool_calls", "stop") and (tool["tool_calls"] or tool["content"])
