"""The local pipeline backend with the real SmolLM2-135M-Instruct (whatever the small model manages)."""

import pytest

from puyu_jax.agent import LocalLLM, load_tools, run
from puyu_jax.agent.llm import parse_hermes_tool_calls
from puyu_jax.agent.types import ToolCall
from puyu_jax.generate import SamplingConfig


def test_hermes_tool_calls_are_read_from_text():
    text, calls = parse_hermes_tool_calls(
        'Let me check.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>\n'
        "<tool_call>{oops}</tool_call>")
    assert text == "Let me check."
    assert calls[0] == ToolCall("calculator", {"expression": "1+1"}, "call_0")
    assert calls[1].error.startswith("unreadable <tool_call> block")


@pytest.mark.slow
def test_smollm2_react_turn():
    llm = LocalLLM("smollm2", sampling=SamplingConfig(max_new_tokens=24))
    tools = load_tools("calculator")
    state = run("What is 6 * 7?", llm, tools, "react", max_turns=1)
    assert state.turn == 1 and state.trajectory
    (reply,) = [m["content"] for m in state.messages if m["role"] == "assistant"]
    assert reply and "<|im_end|>" not in reply and "Observation:" not in reply
    # an answer in the protocol, or the format error shown back to the model: never a crash
    assert state.trajectory[-1].kind in ("final", "error")
    # the OpenAI protocol through the same backend: tools go through the chat template
    state = run("What is 6 * 7?", llm, tools, "openai", max_turns=1)
    assert state.turn == 1 and state.trajectory
