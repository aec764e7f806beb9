"""What the demo's small model relies on: the prompts, the worked example and the grammars agree.

The worked example (`Protocol.example_messages`) is written with each protocol's own messages, so
it must parse back into the example's call and answer, its observation must be what the real tool
returns, and the constrained grammars must accept it: the model imitates it under those grammars.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_api_helpers import smollm2_tokenizer  # noqa: E402

from puyu_jax.agent import LLMReply, ToolCall, init_state, load_tools, run  # noqa: E402
from puyu_jax.agent.protocols import EXAMPLES, InternLM2, ReAct, get_protocol  # noqa: E402
from puyu_jax.agent.types import Act, Final  # noqa: E402
from puyu_jax.serve.config import GenerationConfig  # noqa: E402
from puyu_jax.serve.guided import Guides  # noqa: E402

TOOLS = load_tools("python,calculator")
BY_NAME = {t.spec.name: t for t in TOOLS}


def test_examples_show_what_the_real_tools_return():
    for ex in EXAMPLES:
        result = BY_NAME[ex.tool](ex.arguments)
        assert result.ok and result.text() == ex.observation, ex
        assert ex.observation in ex.answer


def test_react_system_prompt_has_the_schemas_and_the_format():
    (sys_msg,) = ReAct().system_messages(TOOLS)
    text = sys_msg["content"]
    for t in TOOLS:
        assert json.dumps(t.spec.json_schema()) in text
    assert "Action Input: the tool's arguments as a JSON object" in text
    assert "Final Answer: the final answer to the question, taken from the Observation" in text


def test_internlm2_system_turns_spell_out_the_markup():
    msgs = InternLM2().system_messages(TOOLS)
    assert "<|action_start|><|interpreter|>" in msgs[2]["content"] and "```python" in msgs[2]["content"]
    assert '<|action_start|><|plugin|>' in msgs[1]["content"]
    assert json.loads(msgs[1]["content"].split("\n")[0])[0]["name"] == "calculator"


@pytest.mark.parametrize("protocol", ["react", "internlm2", "openai"])
def test_example_turns_parse_back_into_the_call_and_the_answer(protocol):
    from puyu_jax.agent.protocols import nearest_example

    proto = get_protocol(protocol)
    ex = nearest_example("What is 2 + 2?", EXAMPLES)
    state = init_state("What is 2 + 2?", TOOLS, proto, example=True)
    msgs = list(state.messages)
    n_sys = len(proto.system_messages(TOOLS))
    assert msgs[n_sys] == {"role": "user", "content": ex.question}
    assert msgs[-1] == {"role": "user", "content": "What is 2 + 2?"}
    call, obs, answer = msgs[n_sys + 1], msgs[n_sys + 2], msgs[n_sys + 3]
    reply = LLMReply(call.get("content") or "", tuple(ToolCall(c["function"]["name"], c["function"]["arguments"], c["id"])
                                                      for c in call.get("tool_calls", [])))
    parsed = proto.parse(reply)
    assert isinstance(parsed, Act) and parsed.calls[0].name == ex.tool and parsed.calls[0].arguments == ex.arguments
    assert ex.observation in obs["content"] and obs["role"] in ("user", "environment", "tool")
    final = proto.parse(LLMReply(answer["content"]))
    assert isinstance(final, Final) and final.answer == ex.answer
    assert init_state("What is 2 + 2?", TOOLS, proto).messages == tuple(msgs[:n_sys] + msgs[-1:])  # off by default
    assert proto.example_messages(load_tools("calculator"))[0]["content"] == EXAMPLES[1].question
    assert proto.example_messages([]) == []


def _call(ex):
    return ToolCall(ex.tool, dict(ex.arguments))


def _accepts(guides, tag: str, text: str) -> bool:
    """The grammar takes `text` and is then complete (an end-of-sequence token is allowed)."""
    tok = smollm2_tokenizer()
    guide = guides.guide(GenerationConfig(structural_tag=tag))
    return all(guide.accept(t) for t in tok.encode(text)) and guide.accept(sorted(tok.eos_ids)[0])


@pytest.mark.parametrize("protocol", ["react", "internlm2"])
def test_grammars_accept_the_example_and_the_last_turn_only_answers(protocol):
    tok = smollm2_tokenizer()
    guides = Guides.for_tokenizer(tok, tok.vocab_size, tok.eos_ids)
    from puyu_jax.agent.protocols import nearest_example

    proto = get_protocol(protocol)
    ex = nearest_example("What is 2 + 2?", EXAMPLES)
    call_text = proto.call_reply(ex.thought, _call(ex)).text
    answer_text = proto.answer_reply("", ex.answer).text
    if protocol == "internlm2":
        call_text = call_text[call_text.index("<|action_start|>"):]  # a required call starts at once
    assert _accepts(guides, proto.action_format(TOOLS, required=True), call_text)
    assert not _accepts(guides, proto.action_format(TOOLS, required=True), answer_text)
    assert _accepts(guides, proto.action_format(TOOLS), answer_text)
    assert _accepts(guides, proto.answer_format(), answer_text)
    assert not _accepts(guides, proto.answer_format(), call_text)
    if protocol == "react":  # the python tool's code is a JSON string, never a line of free text
        free = "Thought: run it\nAction: python\nAction Input: 37 + 91 = 128"
        assert not _accepts(guides, proto.action_format(TOOLS, required=True), free)


class _Constrained:
    """A backend that decodes under constraints (like LocalLLM) replaying fixed replies; records them."""

    accepts_constraints = True

    def __init__(self, replies):
        self.replies, self.constraints = list(replies), []

    def chat(self, messages, tools=None, stop=(), constraint=None):
        self.constraints.append(constraint)
        return LLMReply(self.replies[len(self.constraints) - 1])


def test_first_turn_calls_and_last_turn_answers():
    proto = ReAct()
    call = 'Thought: run it\nAction: python\nAction Input: {"code": "print(6 * 7)"}'
    llm = _Constrained([call, call, "Thought: I now know the final answer\nFinal Answer: 42"])
    state = run("What is 6 * 7?", llm, TOOLS, proto, max_turns=3, require_tool=True)
    assert llm.constraints == [proto.action_format(TOOLS, required=True), proto.action_format(TOOLS),
                               proto.answer_format()]
    assert state.finished and state.answer == "42"
    llm = _Constrained([call])  # one turn with a required call: the call wins
    run("What is 6 * 7?", llm, TOOLS, proto, max_turns=1, require_tool=True)
    assert llm.constraints == [proto.action_format(TOOLS, required=True)]


def test_the_worked_example_is_the_one_nearest_the_question():
    from puyu_jax.agent.protocols import nearest_example

    python_examples = [e for e in EXAMPLES if e.tool == "python"]
    assert "interest" in nearest_example("How much are 500 dollars worth after 2 years at 3% interest?",
                                         python_examples).question
    assert "prime" in nearest_example("How many primes are there below 50?", python_examples).question
    assert nearest_example(None, python_examples) is python_examples[0]
    assert nearest_example("the of", python_examples) is python_examples[0]  # nothing left to match
    assert nearest_example("anything", []) is None
    # only examples whose tool the agent has are shown
    msgs = ReAct().example_messages(load_tools("calculator"), question="How many primes are there below 50?")
    assert msgs[0]["content"] == "How many minutes are there in a week?"
