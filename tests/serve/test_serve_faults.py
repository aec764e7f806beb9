"""Fault isolation: a request whose step raises fails alone (500 for it, the others go on); a fault in the
engine's shared state (the KV pool) stops the server: /health says so and `puyu serve` exits 1."""

import asyncio
import json
import socket
import threading

import httpx
import jax
import pytest
from serve_api_helpers import MODEL, served, shared_async_engine, tiny_engine, wait_for

from puyu_jax.serve.config import GenerationConfig

CHAT = "/v1/chat/completions"
USER = [{"role": "user", "content": "Tell me about the sea."}]


def _corrupt(gen: GenerationConfig) -> None:
    """A value no validation lets through (as if a check were missing): overflows the runner's int32 top-k."""
    object.__setattr__(gen, "top_k", 2**40)


def test_engine_fails_the_faulty_request_and_serves_the_others():
    engine = tiny_engine()
    baseline = engine.blocks.num_used
    good = engine.add_request("good", [5, 6, 7, 8], GenerationConfig(max_new_tokens=8, ignore_eos=True))
    bad = engine.add_request("bad", [9, 10, 11], GenerationConfig(max_new_tokens=8, temperature=1.0, top_k=3))
    _corrupt(engine.groups[bad].gen)
    finished, failures = {}, []
    for _ in range(40):
        for out in engine.step():  # raised OverflowError for the whole engine before
            if out.finished:
                finished[out.request_id] = out
        failures += engine.take_failures()
        if good in finished:
            break
    assert [rid for rid, _ in failures] == [bad] and isinstance(failures[0][1], OverflowError)
    assert len(finished[good].outputs[0].token_ids) == 8 and bad not in finished
    assert not engine.has_unfinished_requests() and engine.blocks.num_used == baseline


@pytest.fixture()
def faulty_server(monkeypatch):
    """The shared server, where requests with user="fault" reach the engine with a corrupt top_k."""
    from puyu_jax.serve.api import handlers

    make = handlers.generation_config

    def generation_config(req, **kw):
        gen = make(req, **kw)
        if req.user == "fault":
            _corrupt(gen)
        return gen

    monkeypatch.setattr(handlers, "generation_config", generation_config)
    with served() as (url, engine):
        yield url, engine


def test_serve_a_request_fault_is_a_500_for_that_request_alone(faulty_server):
    url, engine = faulty_server
    body = {"model": MODEL, "messages": USER, "max_tokens": 24, "seed": 1, "temperature": 1.0}

    async def run():
        async with httpx.AsyncClient(timeout=120) as client:
            async def stream(extra):
                events = []
                async with client.stream("POST", url + CHAT, json={**body, **extra, "stream": True}) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("data:"):
                            events.append(line[5:].strip())
                return events

            return await asyncio.gather(stream({}), client.post(url + CHAT, json={**body, "user": "fault"}),
                                        stream({"user": "fault"}), stream({"seed": 2}))

    ok1, faulty, faulty_stream, ok2 = asyncio.run(run())
    assert faulty.status_code == 500, faulty.text
    assert faulty.json()["error"]["type"] == "internal_error" and "OverflowError" in faulty.json()["error"]["message"]
    assert faulty_stream[-1] == "[DONE]" and json.loads(faulty_stream[-2])["error"]["code"] == "request_failed"
    for events in (ok1, ok2):
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["choices"][0]["finish_reason"] in ("length", "stop")
    r = httpx.post(url + CHAT, json={**body, "max_tokens": 2}, timeout=60)
    assert r.status_code == 200 and not engine.dead
    assert httpx.get(url + "/health").json()["status"] == "ready"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_a_shared_state_fault_stops_the_server_with_status_1():
    from puyu_jax.serve.cli import ServeConfig, run_server

    engine = tiny_engine()
    port = _free_port()
    cfg = ServeConfig(model="tiny", served_model_name=MODEL, port=port, warmup_batch_sizes=(),
                      warmup_background=False, log_level="warning")
    status = {}
    thread = threading.Thread(target=lambda: status.update(code=run_server(cfg, engine)), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(up, 60)
    assert httpx.post(url + CHAT, json={"model": MODEL, "messages": USER, "max_tokens": 2}, timeout=60).status_code == 200
    for x in jax.tree.leaves(engine.runner.kv):  # the KV pool is gone: no request can run any more
        x.delete()
    r = httpx.post(url + CHAT, json={"model": MODEL, "messages": USER, "max_tokens": 2}, timeout=60)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead", r.text
    health = httpx.get(url + "/health", timeout=5)
    assert health.status_code == 503 and "engine stopped" in health.json()["status"]
    thread.join(60)
    assert status == {"code": 1}
