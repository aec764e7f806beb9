"""The origin documents' example end to end, in each protocol: a_1*b_1 + ... + a_10*b_10 = 17411.

The model is a replayed transcript (ReplayLLM, or an OpenAI-compatible HTTP stand-in reached
through the real `openai` client); the Python tool runs the model's code for real in the sandbox.
"""

import json

from agent_helpers import QUESTION, SOLUTION_CODE

from puyu_jax.agent import LLMReply, OpenAILLM, ReplayLLM, ToolCall, init_state, load_tools, run, step, stream

TOOLS = load_tools("python,calculator")


def _kinds(state):
    return [e.kind for e in state.trajectory]


def test_react_17411():
    llm = ReplayLLM([
        "Thought: From the conditions, a_n = 2n - 1 and b_n = 2^(n-1); I will sum the products with Python.\n"
        f"Action: python\nAction Input: ```python\n{SOLUTION_CODE}\n```\nObservation: (the model must not write this)",
        "Thought: I now know the final answer\nFinal Answer: 17411",
    ])
    state = run(QUESTION, llm, TOOLS, "react", max_turns=4)
    assert state.finished and state.answer == "17411" and state.turn == 2
    assert _kinds(state) == ["thought", "action", "observation", "thought", "final"]
    obs = state.trajectory[2]
    assert obs.tool == "python" and obs.text == "{'result': 17411}"
    # what the model saw on its second turn: its own call (cut at the stop string) and the real observation
    second = llm.requests[1]["messages"]
    assert second[-2]["content"].endswith("```") and "must not write" not in second[-2]["content"]
    assert second[-1] == {"role": "user", "content": "Observation: {'result': 17411}"}
    assert llm.requests[0]["stop"] == ["\nObservation:", "Observation:"]


def test_internlm2_17411():
    llm = ReplayLLM([
        "由题目条件结合数列知识可以得出 a_n 和 b_n 的通项公式, 从而计算出最终结果"
        f"<|action_start|><|interpreter|>\n```python\n{SOLUTION_CODE}\n```",
        "a_1b_1 + a_2b_2 + ... + a_10b_10 = 17411<|im_end|>",
    ])
    state = run(QUESTION, llm, TOOLS, "internlm2")
    assert state.finished and state.answer == "a_1b_1 + a_2b_2 + ... + a_10b_10 = 17411"
    assert state.trajectory[2].text == "{'result': 17411}"
    assert state.messages[-2] == {"role": "environment", "name": "interpreter", "content": "{'result': 17411}"}
    assert state.messages[-3]["content"].endswith("<|action_end|>")


def test_openai_tools_17411_over_http(openai_replay):
    transcript = [
        {"content": None, "tool_calls": [{"id": "call_abc", "type": "function", "function": {
            "name": "python", "arguments": json.dumps({"code": SOLUTION_CODE})}}]},
        {"content": "The sum is 17411."},
    ]
    url, requests = openai_replay(transcript)
    llm = OpenAILLM(url)  # model name from GET /v1/models
    assert llm.model == "replay-model"
    state = run(QUESTION, llm, TOOLS, "openai")
    assert state.finished and state.answer == "The sum is 17411."
    assert [t["function"]["name"] for t in requests[0]["tools"]] == ["python", "calculator"]
    assert requests[0]["tools"][0]["function"]["parameters"]["required"] == ["code"]
    sent = requests[1]["messages"]
    assert sent[-2]["tool_calls"][0]["id"] == "call_abc"
    assert sent[-1] == {"role": "tool", "tool_call_id": "call_abc", "content": "{'result': 17411}"}


def test_malformed_output_and_tool_errors_become_observations():
    llm = ReplayLLM([
        "I think I should just guess.",  # neither action nor answer
        "Thought: use it\nAction: abacus\nAction Input: 1+1",  # no such tool
        'Thought: calculate\nAction: calculator\nAction Input: {"expresion": "1+1"}',  # misspelt argument
        "Thought: again\nAction: calculator\nAction Input: 1/0",  # the tool fails
        "Thought: code\nAction: python\nAction Input: raise ValueError('bad')",  # the code fails
        "Thought: fine\nAction: calculator\nAction Input: 1+1",
        "Final Answer: 2",
    ])
    state = run("1+1?", llm, TOOLS, "react", max_turns=10)
    assert state.answer == "2" and state.turn == 7
    seen = [m["content"] for m in state.messages if m["role"] == "user"][1:]
    assert seen[0].startswith("Observation: Error: Your reply had neither")
    assert seen[1] == "Observation: Error: unknown tool 'abacus'; available tools: python, calculator"
    assert "has no parameter(s) ['expresion']" in seen[2]
    assert seen[3] == "Observation: Error: ZeroDivisionError: division by zero"
    assert "ValueError: bad" in seen[4]
    assert seen[5] == "Observation: 2"


def test_turn_limit():
    llm = ReplayLLM(["Thought: again\nAction: calculator\nAction Input: 1+1"] * 3)
    events = [e for e, _ in stream("loop", llm, TOOLS, "react", max_turns=2)]
    assert [e.kind for e in events][-1] == "error" and "stopped after 2 turn(s)" in events[-1].text
    assert len(llm.requests) == 2


def test_step_is_a_pure_function_of_state_and_reply():
    state = init_state("2+3?", TOOLS, "openai")
    reply = LLMReply("", (ToolCall("calculator", '{"expression": "2+3"}', "c1"),))
    a, b = step(state, reply, TOOLS, "openai"), step(state, reply, TOOLS, "openai")
    assert a == b and a.turn == 1 and not a.finished
    assert state.messages == init_state("2+3?", TOOLS, "openai").messages  # the input state is untouched
    done = step(a, LLMReply("5"), TOOLS, "openai")
    assert done.finished and done.answer == "5" and done.trajectory[:len(a.trajectory)] == a.trajectory
