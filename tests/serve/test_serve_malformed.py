"""No request can take the server down: malformed and extreme bodies of every kind are refused with an
OpenAI-style error naming the field (or served, when they are legal), and a good request right after
each one still succeeds."""

import json

import httpx
import pytest
from serve_api_helpers import MODEL, served

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
GOOD = {"model": MODEL, "messages": USER, "max_tokens": 2, "seed": 0}
CMPL = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "seed": 0}
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def chat(**kw):
    return json.dumps({**GOOD, **kw}).encode()


def cmpl(**kw):
    return json.dumps({**CMPL, **kw}).encode()


def raw(text: str) -> bytes:
    """A chat body with `text` spliced in as raw JSON (NaN, Infinity, escapes json.dumps would not write)."""
    return ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, %s}'
            % (MODEL, text)).encode()


def nested(depth: int) -> dict:
    d: dict = {"type": "string"}
    for _ in range(depth):
        d = {"type": "object", "properties": {"x": d}}
    return d


# (kind, path, body bytes, expected status, expected error param or None); 200 rows are legal extremes
CASES = [
    # types
    ("temperature as a string", CHAT, chat(temperature="hot"), 400, "temperature"),
    ("max_tokens as a float", CHAT, chat(max_tokens=1.5), 400, "max_tokens"),
    ("n as a boolean", CHAT, chat(n=True), 400, "n"),
    ("stream as a string", CHAT, chat(stream="yes"), 400, "stream"),
    ("messages as an object", CHAT, chat(messages={"role": "user", "content": "hi"}), 400, "messages"),
    ("content as a number", CHAT, chat(messages=[{"role": "user", "content": 42}]), 400, "messages.0.content"),
    ("body is JSON null", CHAT, b"null", 400, None),
    ("body is a number", CHAT, b"12345", 400, None),
    ("prompt is an object", COMPLETIONS, cmpl(prompt={"text": "hi"}), 400, "prompt"),
    ("prompt mixes ids and strings", COMPLETIONS, cmpl(prompt=[[1, 2], [3, "x"]]), 400, "prompt"),
    # ranges: ints within the engine's int32 arrays, floats finite
    ("top_k past int32 (killed the engine before)", CHAT, chat(top_k=2**40), 400, "top_k"),
    ("top_k = 2**31", CHAT, chat(top_k=2**31), 400, "top_k"),
    ("top_k = -2", CHAT, chat(top_k=-2), 400, "top_k"),
    ("top_k = int32 max (legal)", CHAT, chat(top_k=2**31 - 1, temperature=1.0), 200, None),
    ("max_tokens = 2**63", CHAT, chat(max_tokens=2**63), 400, "max_tokens"),
    ("max_tokens = 10**30", CHAT, chat(max_tokens=10**30), 400, "max_tokens"),
    ("max_completion_tokens = 2**40", CHAT, json.dumps({"model": MODEL, "messages": USER,
                                                        "max_completion_tokens": 2**40}).encode(),
     400, "max_completion_tokens"),
    ("seed = -1", CHAT, chat(seed=-1), 400, "seed"),
    ("seed = 2**64", CHAT, chat(seed=2**64), 400, "seed"),
    ("seed = 2**63 - 1 (legal)", CHAT, chat(seed=2**63 - 1, temperature=1.0), 200, None),
    ("temperature = NaN", CHAT, raw('"temperature": NaN'), 400, "temperature"),
    ("temperature = 1e999 (inf)", CHAT, raw('"temperature": 1e999'), 400, "temperature"),
    ("top_p = Infinity", CHAT, raw('"top_p": Infinity'), 400, "top_p"),
    ("top_p = -Infinity", CHAT, raw('"top_p": -Infinity'), 400, "top_p"),
    ("top_p = 0", CHAT, chat(top_p=0), 400, "top_p"),
    ("presence_penalty = -1e10", CHAT, chat(presence_penalty=-1e10), 400, "presence_penalty"),
    ("frequency_penalty = 1e308", CHAT, chat(frequency_penalty=1e308), 400, "frequency_penalty"),
    ("repetition_penalty = 0", CHAT, chat(repetition_penalty=0), 400, "repetition_penalty"),
    ("min_p = 1.5", CHAT, chat(min_p=1.5), 400, "min_p"),
    ("temperature = 5e-324 (legal)", CHAT, chat(temperature=5e-324), 200, None),
    ("n = 0", CHAT, chat(n=0), 400, "n"),
    ("n = 10**6", CHAT, chat(n=10**6), 400, "n"),
    ("top_logprobs = -1", CHAT, chat(logprobs=True, top_logprobs=-1), 400, "top_logprobs"),
    ("completions logprobs = 10**12", COMPLETIONS, cmpl(logprobs=10**12), 400, "logprobs"),
    ("completions best_of = 10**9", COMPLETIONS, cmpl(best_of=10**9), 400, "best_of"),
    ("token id -1", COMPLETIONS, cmpl(prompt=[1, -1]), 400, "prompt"),
    ("token id 2**40", COMPLETIONS, cmpl(prompt=[2**40]), 400, "prompt"),
    ("token id past the vocabulary", COMPLETIONS, cmpl(prompt=[[5], [49152]]), 400, "prompt"),
    # sizes
    ("1000 prompts in one request", COMPLETIONS, cmpl(prompt=["a"] * 1000), 400, "prompt"),
    ("a 10k-character stop string", CHAT, chat(stop=["x" * 10_000]), 400, "stop"),
    ("a 10k-character user", CHAT, chat(user="u" * 10_000), 400, "user"),
    ("a 10k-character model name", CHAT, chat(model="m" * 10_000), 400, "model"),
    ("a 3 MB message", CHAT, chat(messages=[{"role": "user", "content": "word " * 600_000}]), 413, "messages"),
    ("a 3 MB prompt", COMPLETIONS, cmpl(prompt="word " * 600_000), 413, "prompt"),
    ("a body over 16 MiB", CHAT, b" " * (17 << 20), 413, None),
    ("4000 short turns", CHAT, chat(messages=[{"role": r, "content": "ok"} for _ in range(2000)
                                             for r in ("user", "assistant")][:-1]), 413, "messages"),
    ("200 tools", CHAT, chat(tools=[TOOL] * 200), 400, "tools"),
    # unicode
    ("a lone surrogate escape", CHAT, raw('"user": "\\ud800"'), 400, None),
    ("bytes that are not UTF-8", CHAT, b'{"model": "\xff\xfe", "messages": []}', 400, None),
    ("a UTF-8 BOM before the body", CHAT, b"\xef\xbb\xbf" + chat(), 400, None),
    ("NUL, RTL override, emoji, combining marks (legal)", CHAT,
     chat(messages=[{"role": "user", "content": "a\x00b\u202ec\U0001F600e\u0301\u200d" * 20}]), 200, None),
    ("CJK and emoji stop strings (legal)", CHAT, chat(stop=["你好", "🙂"], temperature=0.5), 200, None),
    ("an emoji in the model name", CHAT, chat(model="🙂"), 404, "model"),
    # nesting
    ("JSON nested 300 deep", CHAT, b'{"model": ' + b"[" * 300 + b"]" * 300 + b"}", 400, None),
    ("tool parameters nested 300 deep", CHAT,
     ('{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
      '"function": {"name": "f", "parameters": %s}}]}' % (MODEL, '{"a": ' * 300 + "1" + "}" * 300)).encode(),
     400, None),
    ("content parts nested in lists", CHAT, chat(messages=[{"role": "user", "content": [[{"type": "text"}]]}]),
     400, "messages.0.content"),
    ("tool parameters nested 12 deep (legal)", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "deep", "parameters": nested(12)}}]), 200, None),
    # roles
    ("an unknown role", CHAT, chat(messages=[{"role": "function", "content": "x"}]), 400, "messages.0.role"),
    ("a role that is a number", CHAT, chat(messages=[{"role": 1, "content": "x"}]), 400, "messages.0.role"),
    ("the assistant speaks last", CHAT, chat(messages=[*USER, {"role": "assistant", "content": "b"}]),
     422, "messages.1.role"),
    ("a tool result with no call before it", CHAT,
     chat(messages=[*USER, {"role": "tool", "content": "42", "tool_call_id": "c1"}]), 422, "messages.1.role"),
    ("tool_calls in a user message", CHAT, chat(messages=[{"role": "user", "content": "x", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]), 400, "messages.0"),
    ("a 10k-character message name", CHAT, chat(messages=[{"role": "user", "content": "x", "name": "n" * 10_000}]),
     400, "messages.0.name"),
    ("only a system message", CHAT, chat(messages=[{"role": "system", "content": "s"}]), 422, "messages"),
    # tool schemas
    ("tool parameters of type string", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
     400, "tools.0.function.parameters"),
    ("tool properties that are not schemas", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                                "properties": {"a": 5}}}}]),
     400, "tools.0.function.parameters"),
    ("tool required as a string", CHAT,
     chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                                "required": "a"}}}]),
     400, "tools.0.function.parameters"),
    ("a tool name with spaces", CHAT, chat(tools=[{"type": "function", "function": {"name": "get weather"}}]),
     400, "tools.0.function.name"),
    ("a tool of type retrieval", CHAT, chat(tools=[{"type": "retrieval"}]), 400, "tools.0.type"),
    ("tool_choice naming an unknown tool", CHAT,
     chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "nope"}}), 422, "tool_choice"),
    ("tool_choice required without tools", CHAT, chat(tool_choice="required"), 400, "tool_choice"),
    ("tool call arguments as an object", CHAT, chat(messages=[*USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "1", "tool_call_id": "c1"}]), 400, "messages.1.tool_calls.0.function.arguments"),
    ("a full tool round trip (legal)", CHAT, chat(tools=[TOOL], messages=[*USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "content": "sunny", "tool_call_id": "c1"}]), 200, None),
]


@pytest.fixture(scope="module")
def server():
    with served() as (url, engine):
        yield url, engine


def test_serve_many_kinds_of_malformed_requests(server):
    url, engine = server
    assert len(CASES) >= 40
    failures = []
    with httpx.Client(timeout=120, headers={"Content-Type": "application/json"}) as client:
        for kind, path, body, status, param in CASES:
            r = client.post(url + path, content=body)
            got = (r.status_code, r.json()["error"]["param"] if r.status_code != 200 else None)
            if r.status_code != 200:
                err = r.json()["error"]
                assert set(err) == {"message", "type", "param", "code"} and err["message"], (kind, err)
            if got != (status, param):
                failures.append(f"{kind}: expected {(status, param)}, got {got}: {r.text[:200]}")
            good = client.post(url + CHAT, content=chat())
            assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"], \
                f"after {kind!r} a good request failed: {good.status_code} {good.text[:300]}"
            assert not engine.dead, kind
    assert not failures, "\n".join(failures)
