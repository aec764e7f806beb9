"""Tool calling: the markup each chat template writes, parsed back (whole and streamed), and rendered prompts."""

import json

import pytest
from serve_api_helpers import smollm2_tokenizer

from puyu_jax.chat_templates import TEMPLATES, render_chat
from puyu_jax.serve.api.chat import ChatPrompter
from puyu_jax.serve.api.errors import APIError
from puyu_jax.serve.api.protocol import ChatCompletionRequest
from puyu_jax.serve.api.tool_parsers import HERMES, ToolCallFormat, ToolCallParser, detect_format, parse_tool_calls

# Qwen2.5's published template, reduced to its tool parts (a template in the Hermes style that writes calls itself)
QWEN_STYLE = (
    "{%- if tools %}<|im_start|>system\n<tools>{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% endif %}{%- for message in messages %}{%- if message.role == 'assistant' and message.tool_calls %}"
    "<|im_start|>assistant\n{{ message.content }}{%- for tool_call in message.tool_calls %}\n<tool_call>\n"
    '{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments }}}\n</tool_call>'
    "{%- endfor %}<|im_end|>\n{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama-3.1's JSON-only tool calls ("parameters"), reduced
LLAMA31_STYLE = (
    "{%- for message in messages %}<|start_header_id|>{{ message.role }}<|end_header_id|>\n\n"
    "{%- if message.tool_calls %}{%- for tc in message.tool_calls %}"
    '{{ \'{"name": "\' + tc.function.name + \'", "parameters": \' + tc.function.arguments + \'}\' }}'
    "{%- endfor %}{%- else %}{{ message.content }}{%- endif %}<|eot_id|>{%- endfor %}"
    "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                              "parameters": {"type": "object",
                                                             "properties": {"city": {"type": "string"}}}}}


def fmt_of(template: str) -> ToolCallFormat:
    return detect_format(lambda m, **kw: render_chat(template, m, **kw))


def streamed(text: str, fmt: ToolCallFormat, step: int = 1):
    p = ToolCallParser(fmt)
    events = []
    for i in range(0, len(text), step):
        events += p.feed(text[i:i + step])
    events += p.finish()
    return events, p.calls


def test_serve_formats_learnt_from_the_templates():
    internlm2 = fmt_of("internlm2")
    assert (internlm2.start, internlm2.end, internlm2.name_key, internlm2.args_key) == (
        "<|action_start|><|plugin|>\n", "<|action_end|>", "name", "parameters")
    assert internlm2.native_calls and internlm2.native_tools
    for name in ("chatml", "llama-2", "llama-3", "plain"):  # these write no tool calls: the Hermes convention
        f = fmt_of(name)
        assert (f.start, f.end, f.args_key, f.native_calls, f.native_tools) == (
            "<tool_call>\n", "\n</tool_call>", "arguments", False, False)
    qwen = fmt_of(QWEN_STYLE)
    assert (qwen.start, qwen.end, qwen.args_key, qwen.native_calls, qwen.native_tools) == (
        "<tool_call>\n", "\n</tool_call>", "arguments", True, True)
    llama31 = fmt_of(LLAMA31_STYLE)
    assert (llama31.start, llama31.end, llama31.args_key, llama31.native_calls) == ("", "", "parameters", True)


@pytest.mark.parametrize("template", ["internlm2", "chatml", QWEN_STYLE, LLAMA31_STYLE],
                         ids=["internlm2", "chatml", "qwen-style", "llama31-style"])
def test_serve_rendered_calls_parse_back_exactly(template):
    """What a template writes for assistant tool_calls is read back as the same calls, whole and streamed."""
    fmt = fmt_of(template)
    calls = [("get_weather", {"city": "Paris", "units": ["c", {"nested": "}{\""}]}), ("now", {})]
    if not fmt.start:  # JSON-only turns hold one call
        calls = calls[:1]
    if fmt.native_calls:
        message = {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(calls)]}
        before = render_chat(template, [{"role": "user", "content": "q"}], add_generation_prompt=True)
        after = render_chat(template, [{"role": "user", "content": "q"}, message], add_generation_prompt=False)
        if not after.startswith(before):  # a template that trims the header's whitespace before a call
            before = before.rstrip()
        text = after[len(before):].strip()
        for end in ("<|im_end|>", "<|eot_id|>"):
            text = text.removesuffix(end)
    else:
        text = "\n".join(fmt.render_call(n, json.dumps(a)) for n, a in calls)
    content, parsed = parse_tool_calls(text, fmt)
    assert content == ""
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    for step in (1, 3, 7):
        events, stream_calls = streamed(text, fmt, step)
        assert "".join(e.text for e in events if e.kind == "content") == ""
        names = [e for e in events if e.kind == "name"]
        assert [e.text for e in names] == [n for n, _ in calls] and all(e.id.startswith("call_") for e in names)
        for i, (_, a) in enumerate(calls):
            assert json.loads("".join(e.text for e in events if e.kind == "args" and e.index == i)) == a


def test_serve_parser_holds_back_possible_markup_and_keeps_plain_text():
    events, calls = streamed("The answer is <tool but not a call> and a <t", HERMES)
    assert calls == [] and "".join(e.text for e in events) == "The answer is <tool but not a call> and a <t"
    p = ToolCallParser(HERMES)
    assert "".join(e.text for e in p.feed("Let me check. <tool_")) == "Let me check."  # "<tool_" held back
    assert p.feed("call>\n") == []
    events = p.feed('{"name": "get_weather", "arguments": {"ci') + p.feed('ty": "Oslo"}}\n</tool_call>') + p.finish()
    assert [e.kind for e in events][0] == "name" and events[0].text == "get_weather"
    assert "".join(e.text for e in events if e.kind == "args") == '{"city": "Oslo"}'
    # a call cut by the length limit keeps what was generated
    content, calls = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"q": "unfinished', HERMES)
    assert content == "" and calls[0].name == "f" and calls[0].arguments == '{"q": "unfinished' and not calls[0].complete
    # markup that is not followed by JSON is plain text after all
    content, calls = parse_tool_calls("see <tool_call> in the docs", HERMES)
    assert calls == [] and content == "see <tool_call> in the docs"


def request(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", **kw})


def test_serve_prompts_with_tools_per_template():
    tok = smollm2_tokenizer()
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"},
    ]
    internlm2 = ChatPrompter(tok, "internlm2").build(request(messages=history, tools=[WEATHER]))
    assert "<|im_start|>system name=<|plugin|>\n" in internlm2.text and '"get_weather"' in internlm2.text
    assert ('<|action_start|><|plugin|>\n{"name": "get_weather", "parameters": {"city": "Paris"}}<|action_end|>'
            in internlm2.text)
    assert "<|im_start|>environment name=<|plugin|>\n18C and sunny<|im_end|>" in internlm2.text
    assert internlm2.text.endswith("<|im_start|>assistant\n") and internlm2.tools_active
    # the checkpoint's own template (SmolLM2's ChatML) shows no tools: they go into the system turn, Hermes style
    own = ChatPrompter(tok, tok.chat_template).build(request(messages=history, tools=[WEATHER]))
    assert own.text.startswith("<|im_start|>system\nYou may call one or more functions")
    assert json.dumps(WEATHER["function"]) in own.text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in own.text
    assert "<|im_start|>tool\n18C and sunny<|im_end|>" in own.text
    # llama-2 has no tool role: the result comes back as a user turn
    llama2 = ChatPrompter(tok, "llama-2").build(request(messages=history, tools=[WEATHER]))
    assert "<tool_response>\n18C and sunny\n</tool_response>" in llama2.text
    # tool_choice none hides the tools; a named choice or "required" commits the reply to a call
    assert "get_weather" not in ChatPrompter(tok, "chatml").build(
        request(messages=history[:1], tools=[WEATHER], tool_choice="none")).text
    named = ChatPrompter(tok, "internlm2").build(request(messages=history[:1], tools=[WEATHER], tool_choice={
        "type": "function", "function": {"name": "get_weather"}}))
    assert named.text.endswith('<|im_start|>assistant\n<|action_start|><|plugin|>\n{"name": "get_weather", '
                               '"parameters": ')
    required = ChatPrompter(tok, "chatml").build(request(messages=history[:1], tools=[WEATHER], tool_choice="required"))
    assert required.prefill == '<tool_call>\n{"name":' and required.text.endswith(required.prefill)
    with pytest.raises(APIError) as e:
        ChatPrompter(tok, "llama-2").build(request(messages=[{"role": "user", "content": "a"}, {
            "role": "assistant", "content": "b"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]))
    assert e.value.status == 422  # the template's own role-order check
    assert set(TEMPLATES) == {"internlm2", "chatml", "llama-2", "llama-3", "plain"}  # every shipped template is covered
