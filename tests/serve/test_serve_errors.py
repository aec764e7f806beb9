"""Errors in the OpenAI shape, their status codes, authentication, back-pressure, and an engine that survives them."""

import asyncio
import json

import httpx
import pytest
from serve_api_helpers import MODEL, served, tiny_engine

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
OK = {"model": MODEL, "messages": USER, "max_tokens": 2, "seed": 0}

# (path, body, status, param): every row is a request the server must refuse, and how
BAD = [
    (CHAT, b"{", 400, None),
    (CHAT, b"", 400, None),
    (CHAT, b"[1, 2]", 400, None),
    (CHAT, b'"text"', 400, None),
    (CHAT, {"messages": USER}, 400, "model"),
    (CHAT, {"model": MODEL}, 400, "messages"),
    (CHAT, {**OK, "model": "gpt-4"}, 404, "model"),
    (CHAT, {**OK, "messages": []}, 400, "messages"),
    (CHAT, {**OK, "messages": "hi"}, 400, "messages"),
    (CHAT, {**OK, "messages": [{"role": "robot", "content": "x"}]}, 400, "messages.0.role"),
    (CHAT, {**OK, "messages": [{"role": "user"}]}, 400, "messages.0"),
    (CHAT, {**OK, "messages": [{"role": "user", "content": "x", "mood": "happy"}]}, 400, "messages.0.mood"),
    (CHAT, {**OK, "logit_bias": {"1": 5}}, 400, "logit_bias"),
    (CHAT, {**OK, "functions": []}, 400, "functions"),
    (CHAT, {**OK, "temperature": "hot"}, 400, "temperature"),
    (CHAT, {**OK, "temperature": 3.5}, 400, "temperature"),
    (CHAT, {**OK, "max_tokens": "5"}, 400, "max_tokens"),
    (CHAT, {**OK, "max_tokens": 0}, 400, "max_tokens"),
    (CHAT, {**OK, "max_tokens": 100_000}, 400, "max_tokens"),
    (CHAT, {"model": MODEL, "messages": USER, "max_completion_tokens": 100_000}, 400, "max_completion_tokens"),
    (CHAT, {**OK, "n": 17}, 400, "n"),
    (CHAT, {**OK, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    (CHAT, {**OK, "stop": [""]}, 400, "stop"),
    (CHAT, {**OK, "stop": 5}, 400, "stop"),
    (CHAT, {**OK, "top_logprobs": 3}, 400, "top_logprobs"),
    (CHAT, {**OK, "max_completion_tokens": 3}, 400, "max_completion_tokens"),
    (CHAT, {**OK, "top_logprobs": 21, "logprobs": True}, 400, "top_logprobs"),
    (CHAT, {**OK, "stream_options": {"include_usage": True}}, 400, "stream_options"),
    (CHAT, {**OK, "response_format": {"type": "json_schema"}}, 400, "response_format"),
    (CHAT, {**OK, "response_format": {"type": "yaml"}}, 400, "response_format.type"),
    (CHAT, {**OK, "tool_choice": "required"}, 400, "tool_choice"),
    (CHAT, {**OK, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages.0.content"),
    (CHAT, {**OK, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
     422, "messages.1.role"),
    (CHAT, {**OK, "messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}]},
     422, "messages.1.role"),
    (CHAT, {**OK, "messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]}, 422, "messages.0.role"),
    (CHAT, {**OK, "messages": [{"role": "system", "content": "only"}]}, 422, "messages"),
    (CHAT, {**OK, "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}}, 422, "tool_choice"),
    (CHAT, {**OK, "messages": [{"role": "user", "content": "word " * 600}]}, 413, "messages"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "suffix": "y"}, 400, "suffix"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "best_of": 3}, 400, "best_of"),
    (COMPLETIONS, {"model": MODEL, "prompt": ""}, 400, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": []}, 400, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": [10**9]}, 400, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "logprobs": 21}, 400, "logprobs"),
    (COMPLETIONS, {"model": MODEL, "prompt": "word " * 600}, 413, "prompt"),
    (COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": 600}, 400, "max_tokens"),
]


@pytest.fixture(scope="module")
def server():
    with served(api_keys=("k1", "k2")) as (url, engine):
        yield url, engine


def auth(key="k1"):
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path,body,status,param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_serve_bad_request(server, path, body, status, param):
    url, _ = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(url + path, content=content, headers={**auth(), "Content-Type": "application/json"}, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param, err
    if status == 400 and param and param.split(".")[-1] in ("mood", "logit_bias", "functions"):
        assert param.split(".")[-1] in err["message"] and err["code"] == "unsupported_field"


def test_serve_auth(server):
    url, _ = server
    for headers in ({}, auth("wrong"), {"Authorization": "k1"}, {"Authorization": "Basic k1"}):
        r = httpx.post(url + CHAT, json=OK, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers=auth("k2")).status_code == 200
    assert httpx.post(url + CHAT, json=OK, headers=auth("k2"), timeout=60).status_code == 200
    assert httpx.get(url + "/health").status_code == 200  # probes need no key


def test_serve_garbage_does_not_kill_the_engine(server):
    url, engine = server
    for body in (b"\xff\xfe\x00", b"{" * 10_000, b'{"model": null, "messages": [null]}', json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "\x00\ud7ff" * 50}], "max_tokens": 1}).encode()):
        r = httpx.post(url + CHAT, content=body, headers={**auth(), "Content-Type": "application/json"}, timeout=60)
        assert r.status_code in (200, 400), r.text
    huge = httpx.post(url + CHAT, content=b" " * (17 << 20), headers={**auth(), "Content-Type": "application/json"})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "body_too_large"
    assert httpx.get(url + "/nowhere", headers=auth()).json()["error"]["type"] == "not_found_error"
    assert httpx.get(url + CHAT, headers=auth()).status_code == 405
    r = httpx.post(url + CHAT, json=OK, headers=auth(), timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert not engine.dead


def test_serve_queue_full_is_429_with_retry_after():
    from puyu_jax.serve.async_engine import AsyncEngine

    # same shapes as the shared engine (its compiled steps are reused), but only one request may wait
    engine = AsyncEngine(tiny_engine(max_waiting=1))
    engine.start()
    try:
        with served(engine) as (url, _):
            async def burst():
                async with httpx.AsyncClient(timeout=120) as client:
                    body = {**OK, "max_tokens": 48}
                    return await asyncio.gather(*[client.post(url + CHAT, json=body) for _ in range(28)])

            replies = asyncio.run(burst())
            statuses = [r.status_code for r in replies]
            assert 200 in statuses and 429 in statuses, statuses
            refused = next(r for r in replies if r.status_code == 429)
            assert refused.json()["error"]["type"] == "rate_limit_error"
            assert refused.json()["error"]["code"] == "queue_full"
            assert int(refused.headers["retry-after"]) >= 1
            assert httpx.post(url + CHAT, json=OK, timeout=60).status_code == 200
    finally:
        engine.shutdown(drain_timeout_s=5)


def test_serve_max_concurrency_is_429(server):
    with served(max_concurrency=1) as (url, _):
        async def two():
            async with httpx.AsyncClient(timeout=120) as client:
                body = {**OK, "max_tokens": 40}
                return await asyncio.gather(client.post(url + CHAT, json=body), client.post(url + CHAT, json=body))

        statuses = sorted(r.status_code for r in asyncio.run(two()))
        assert statuses == [200, 429]
