"""Protocol parsers on transcripts written from each format's documentation."""

import json

import pytest

from puyu_jax.agent import LLMReply, ToolCall, load_tools
from puyu_jax.agent.protocols import InternLM2, OpenAITools, ReAct, get_protocol
from puyu_jax.agent.types import Act, Final, Malformed

TOOLS = load_tools("python,calculator")

# --------------------------------------------------------------------------- ReAct (Yao et al.; LangChain / Lagent)


def test_react_action_with_json_input():
    text = ("Thought: I need to multiply the two numbers.\nAction: calculator\n"
            'Action Input: {"expression": "37 * 91"}\nObservation: 3367\nThought: done\nFinal Answer: 3367')
    parsed = ReAct().parse(LLMReply(text))
    assert parsed == Act("I need to multiply the two numbers.", (ToolCall("calculator", {"expression": "37 * 91"}),))


def test_react_action_with_raw_code_input():
    text = "Thought: Let me run code.\nAction: python\nAction Input: ```python\nprint(2 ** 10)\n```"
    parsed = ReAct().parse(LLMReply(text))
    assert parsed.calls == (ToolCall("python", "```python\nprint(2 ** 10)\n```"),)


def test_react_final_answer():
    text = "Thought: I now know the final answer\nFinal Answer: Paris is the capital of France."
    assert ReAct().parse(LLMReply(text)) == Final("I now know the final answer", "Paris is the capital of France.")


def test_react_first_of_action_and_final_wins():
    text = "Thought: compute\nAction: calculator\nAction Input: 1+1\nFinal Answer: 2"
    assert ReAct().parse(LLMReply(text)).calls == (ToolCall("calculator", "1+1"),)
    text = "Final Answer: 2\nAction: calculator\nAction Input: 1+1"
    assert isinstance(ReAct().parse(LLMReply(text)), Final)


@pytest.mark.parametrize("text, message", [
    ("I think the answer is 4.", "neither `Action:`"),
    ("Thought: use a tool\nAction: calculator\n", "must be followed by `Action Input:`"),
    ("Thought: hmm\nAction:\nAction Input: 1", "must name a tool"),
])
def test_react_malformed(text, message):
    parsed = ReAct().parse(LLMReply(text))
    assert isinstance(parsed, Malformed) and message in parsed.error


def test_react_prompt_and_messages():
    (sys_msg,) = ReAct().system_messages(TOOLS, "Be brief.")
    assert sys_msg["content"].startswith("Be brief.\n\nAnswer the question")
    assert '"name": "calculator"' in sys_msg["content"] and "one of [python, calculator]" in sys_msg["content"]
    assert ReAct().observation_messages([(ToolCall("calculator", "1+1"), "2")]) == [
        {"role": "user", "content": "Observation: 2"}]
    reply = LLMReply("Thought: t\nAction: calculator\nAction Input: 1+1\nObservation: 5")
    assert ReAct().assistant_message(reply, ReAct().parse(reply))["content"] == "Thought: t\nAction: calculator\nAction Input: 1+1"


# --------------------------------------------------------------------------- InternLM2 (InternLM chat_format.md)


def test_internlm2_plugin_call():
    # the documented function-call example
    text = ('I need to use the get_current_weather function to get the current weather in San Francisco.'
            '<|action_start|><|plugin|>\n{"name": "get_current_weather", "parameters": {"location": "San Francisco, CA"}}'
            '<|action_end|>\n')
    parsed = InternLM2().parse(LLMReply(text))
    assert parsed == Act("I need to use the get_current_weather function to get the current weather in San Francisco.",
                         (ToolCall("get_current_weather", {"location": "San Francisco, CA"}),))


def test_internlm2_interpreter_call_cut_by_the_stop_string():
    text = "Let me compute it.<|action_start|><|interpreter|>\n```python\nprint(sum(range(5)))\n```"
    parsed = InternLM2().parse(LLMReply(text))
    assert parsed.calls == (ToolCall("python", {"code": "print(sum(range(5)))"}),)
    msg = InternLM2().assistant_message(LLMReply(text), parsed)
    assert msg["content"].endswith("```<|action_end|>")


def test_internlm2_plain_reply_is_the_answer():
    assert InternLM2().parse(LLMReply("The weather in San Francisco is 22°C.<|im_end|>")) == Final(
        "", "The weather in San Francisco is 22°C.")


@pytest.mark.parametrize("text, message", [
    ('<|action_start|><|plugin|>\n{"name": "calculator", "parameters": {"expression": "1+1"}', "not valid JSON"),
    ("<|action_start|><|plugin|>\n[1, 2]<|action_end|>", "must be a JSON object"),
    ("<|action_start|><|browser|>\nhttp://x<|action_end|>", "must be followed by `<|plugin|>`"),
    ("<|action_start|><|interpreter|>\n<|action_end|>", "has no code"),
])
def test_internlm2_malformed(text, message):
    parsed = InternLM2().parse(LLMReply(text))
    assert isinstance(parsed, Malformed) and message in parsed.error


def test_internlm2_system_turns_and_environment():
    msgs = InternLM2().system_messages(TOOLS)
    assert [(m["role"], m.get("name")) for m in msgs] == [("system", None), ("system", "plugin"), ("system", "interpreter")]
    schemas, how = msgs[1]["content"].split("\n", 1)  # the tools' JSON, then how to call them
    plugins = json.loads(schemas)
    assert [p["name"] for p in plugins] == ["calculator"] and "returns" not in plugins[0]
    assert "<|action_start|><|plugin|>" in how and "<|action_end|>" in how
    assert InternLM2().observation_messages([(ToolCall("python", {}), "10"), (ToolCall("calculator", {}), "2")]) == [
        {"role": "environment", "name": "interpreter", "content": "10"},
        {"role": "environment", "name": "plugin", "content": "2"}]


# --------------------------------------------------------------------------- OpenAI function calling


def test_openai_tool_calls_and_final():
    p = OpenAITools()
    reply = LLMReply("", (ToolCall("calculator", '{"expression": "2+2"}', "call_1"),
                          ToolCall("python", '{"code": ', "call_2")))
    parsed = p.parse(reply)
    assert parsed.calls[0] == ToolCall("calculator", {"expression": "2+2"}, "call_1")
    assert parsed.calls[1].error.startswith("the arguments are not valid JSON")
    assert p.parse(LLMReply("4")) == Final("", "4")
    assert p.assistant_message(reply, parsed)["tool_calls"][0] == {
        "id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2+2"}'}}
    assert p.observation_messages([(parsed.calls[0], "4")]) == [{"role": "tool", "tool_call_id": "call_1", "content": "4"}]
    assert [t["function"]["name"] for t in p.llm_tools(TOOLS)] == ["python", "calculator"]
    assert ReAct().llm_tools(TOOLS) is None


def test_get_protocol():
    assert isinstance(get_protocol("internlm2"), InternLM2)
    with pytest.raises(ValueError, match="unknown protocol"):
        get_protocol("xml")
