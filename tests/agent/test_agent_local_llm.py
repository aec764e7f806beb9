"""The local pipeline backend with the real SmolLM2-135M-Instruct (whatever the small model manages)."""

import pytest
from oracle import DenseGenerator, save_tiny_checkpoint

from puyu_jax.agent import LocalLLM, load_tools, run
from puyu_jax.agent.llm import parse_hermes_tool_calls
from puyu_jax.agent.protocols import truncate_at
from puyu_jax.agent.types import ToolCall
from puyu_jax.serve.config import GenerationConfig


def test_hermes_tool_calls_are_read_from_text():
    text, calls = parse_hermes_tool_calls(
        'Let me check.\n<tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>\n'
        "<tool_call>{oops}</tool_call>")
    assert text == "Let me check."
    assert calls[0] == ToolCall("calculator", {"expression": "1+1"}, "call_0")
    assert calls[1].error.startswith("unreadable <tool_call> block")


@pytest.mark.slow
def test_smollm2_react_turn():
    llm = LocalLLM("smollm2", sampling=GenerationConfig(max_new_tokens=24))
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


def test_local_llm_runs_on_the_engine_with_the_oracle_tokens(tmp_path, smollm2_gguf):
    """The reply is the greedy continuation of the chat-templated prompt (the dense oracle's
    tokens), cut at the first stop string."""
    from puyu_jax.chat_templates import apply_chat_template
    from puyu_jax.pretrained import load_pretrained

    pre = load_pretrained(str(save_tiny_checkpoint(tmp_path / "ckpt", smollm2_gguf)))
    llm = LocalLLM(pretrained=pre, sampling=GenerationConfig(max_new_tokens=16))
    messages = [{"role": "user", "content": "What is 6 * 7?"}]
    ids = apply_chat_template(pre.tokenizer, messages, add_generation_prompt=True, tokenize=True)
    want = DenseGenerator(pre.model).generate([ids], 16, stop_ids=pre.tokenizer.eos_ids)[0]
    text = pre.tokenizer.decode(want, skip_special=False)
    template_stops = llm._template_stops()
    assert llm.chat(messages).text == truncate_at(text, template_stops)
    stop = text[len(text) // 2:][:3]
    assert llm.chat(messages, stop=[stop]).text == truncate_at(text, [stop] + template_stops)
