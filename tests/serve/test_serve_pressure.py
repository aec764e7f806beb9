"""Serving under pressure: a huge prompt does not stop the event loop; a queued stream gets its headers and
`: ping` keep-alives before its first token; warm-up leaves nothing to compile for a mixed workload; SIGTERM
under load ends every stream with [DONE] and exits 0."""

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from serve_api_helpers import MODEL, served, start_tiny_serve, tiny_engine, wait_for, wait_healthy

from puyu_jax.serve.async_engine import AsyncEngine

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "Write a long story about the sea."}]


@contextlib.contextmanager
def started(engine: AsyncEngine):
    engine.start()
    try:
        yield engine
    finally:
        engine.shutdown(drain_timeout_s=0)


def test_serve_a_huge_prompt_is_prepared_off_the_event_loop():
    # a context long enough that a 1.5 MB prompt passes the cheap character check and must be tokenized
    with started(AsyncEngine(tiny_engine(max_model_len=1_000_000))) as engine, served(engine) as (url, _):
        result = {}

        def huge():
            body = {"model": MODEL, "prompt": "the sea, 大海 " * 125_000, "max_tokens": 1}
            result["r"] = httpx.post(url + COMPLETIONS, json=body, timeout=300)

        sender = threading.Thread(target=huge)
        start = time.perf_counter()
        sender.start()
        worst = 0.0
        while sender.is_alive():
            t0 = time.perf_counter()
            assert httpx.get(url + "/health", timeout=30).status_code == 200
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.05)
        sender.join()
        elapsed = time.perf_counter() - start
        r = result["r"]
        assert r.status_code == 413 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert "tokens" in r.json()["error"]["message"]  # refused after tokenizing, not by the character check
        # tokenizing in the event loop held /health for the whole time; now only the moments the tokenizer
        # holds the GIL (copying ids out) remain, which a loaded 2-core machine stretches
        assert worst < max(1.0, 0.25 * elapsed), f"/health waited {worst:.1f} s of the {elapsed:.1f} s"


def test_serve_a_queued_stream_gets_headers_and_pings_before_its_first_token():
    with started(AsyncEngine(tiny_engine(max_num_seqs=1))) as engine, served(engine, sse_ping_s=0.2) as (url, _):
        body = {"model": MODEL, "messages": USER, "max_tokens": 450, "ignore_eos": True, "seed": 1, "stream": True}
        first_a, done_a = threading.Event(), {}

        def long_stream():
            with httpx.stream("POST", url + CHAT, json=body, timeout=300) as r:
                for line in r.iter_lines():
                    if '"content"' in line:
                        first_a.set()
                done_a["t"] = time.perf_counter()

        a = threading.Thread(target=long_stream)
        a.start()
        assert first_a.wait(120)
        lines, t0 = [], time.perf_counter()
        with httpx.stream("POST", url + CHAT, json={**body, "max_tokens": 3}, timeout=300) as r:
            headers_at = time.perf_counter()
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line:
                    lines.append((time.perf_counter(), line))
        a.join()
        assert headers_at < done_a["t"], f"the headers waited {headers_at - t0:.1f} s, until the queue moved"
        first_data = next(i for i, (_, line) in enumerate(lines) if line.startswith("data:"))
        pings = [line for _, line in lines[:first_data] if line.startswith(":")]
        assert len(pings) >= 2 and all(p == ": ping" for p in pings), lines[:first_data + 1]
        assert lines[first_data][0] >= done_a["t"] - 0.5  # the first data event came with the first token
        assert lines[-1][1] == "data: [DONE]"


def test_serve_headers_do_not_wait_for_a_long_engine_step():
    """A step that takes seconds (a compile, on a CPU) holds no client's headers: a request is
    checked and its stream opened before the engine's loop takes it. A request the loop then
    refuses still ends its stream with an error event and [DONE]."""
    engine = AsyncEngine(tiny_engine())
    slow = threading.Event()
    step = engine.engine.step

    def slow_step():
        if slow.is_set():
            time.sleep(4.0)
        return step()

    engine.engine.step = slow_step
    with started(engine), served(engine, sse_ping_s=0.5) as (url, _):
        body = {"model": MODEL, "prompt": "the sea", "max_tokens": 3, "stream": True}
        assert httpx.post(url + COMPLETIONS, json={**body, "stream": False}, timeout=120).status_code == 200
        slow.set()
        busy = threading.Thread(target=lambda: httpx.post(url + COMPLETIONS, json={**body, "stream": False},
                                                          timeout=120))
        busy.start()
        time.sleep(0.5)  # the loop is now inside a 4 s step
        t0 = time.perf_counter()
        with httpx.stream("POST", url + COMPLETIONS, json=body, timeout=120) as r:
            headers_s = time.perf_counter() - t0
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        busy.join()
        assert headers_s < 2.0, f"the headers waited {headers_s:.1f} s for the engine's step"
        assert lines[-1] == "data: [DONE]" and any('"text"' in line for line in lines)
        # refused by the loop, after the headers (the checks on the caller's side let it through)
        slow.clear()
        add = engine.engine.add_request

        def refusing_add(rid, *a, **k):
            raise ValueError("refused by the engine's loop")

        engine.engine.add_request = refusing_add
        with httpx.stream("POST", url + COMPLETIONS, json=body, timeout=120) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line.startswith("data:")]
        engine.engine.add_request = add
        assert "refused by the engine" in lines[-2] and lines[-1] == "data: [DONE]", lines
        assert httpx.post(url + COMPLETIONS, json={**body, "stream": False}, timeout=120).status_code == 200


def _serve_with_lifespan(app):
    """Like tests/http_server.serving, with the app's lifespan (its background warm-up) on."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, 30)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.mark.slow  # ~50 compilations: about a minute on a quiet 2-core machine
def test_serve_warmup_leaves_nothing_to_compile_for_a_mixed_workload():
    from puyu_jax.models.config import ModelConfig
    from puyu_jax.models.params import init_model
    from puyu_jax.serve.config import EngineConfig, GenerationConfig
    from puyu_jax.serve.engine import LLMEngine
    from puyu_jax.serve.runner import ModelRunner
    from puyu_jax.serve.warmup import PROMPT_LEN, run_warmup, warmup_plan

    # a small vocabulary keeps the ~50 compilations short; the programs are the same kind as any model's
    cfg = ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=16, max_position_embeddings=256)
    llm = LLMEngine(init_model(cfg, 0), None, EngineConfig(num_blocks=64, max_num_seqs=2, max_num_batched_tokens=16))
    plan = warmup_plan(llm.config, llm.max_model_len)
    assert len(plan) == 24 and {s.label for s in plan} >= {"batch 1 greedy", "batch 2 sampled+top-p+penalties+logprobs"}
    assert {s.label for s in warmup_plan(EngineConfig(max_num_seqs=32), 8192)} >= {
        "batch 32 greedy+penalties", "prefill 512 tokens sampled"}
    engine = AsyncEngine(llm)
    rng = np.random.default_rng(0)

    def gen(i):
        kw = {"temperature": 0.8 if i % 2 else 0.0, "seed": i, "max_new_tokens": int(rng.integers(1, 4))}
        if i % 4 == 1:
            kw["top_p"] = 0.9
        if i % 3 == 0:
            kw["presence_penalty"] = 0.5
        if i % 5 == 0:
            kw.update(logprobs=True, top_logprobs=2)
        return GenerationConfig(**kw)

    async def run():
        seconds = await run_warmup(engine, plan)
        before = ModelRunner.compiled_programs()

        async def one(i):
            await asyncio.sleep(0.01 * (i % 3))  # staggered: prefills meet decodes of other mixes
            prompt = rng.integers(1, 512, int(rng.integers(2, PROMPT_LEN + 1))).tolist()
            async for out in engine.generate(prompt, gen(i)):
                pass
            return out

        outs = await asyncio.gather(*[one(i) for i in range(24)])
        assert all(o.finished for o in outs)
        return seconds, before

    with started(engine):
        seconds, before = asyncio.run(run())
        assert ModelRunner.compiled_programs() == before, f"warm-up took {seconds:.0f} s and missed shapes"


def test_serve_health_says_warming_until_the_warmup_is_done():
    from puyu_jax.serve.api.app import create_app
    from puyu_jax.serve.config import GenerationConfig
    from puyu_jax.serve.warmup import WarmupStep

    engine = AsyncEngine(tiny_engine())
    plan = [WarmupStep(1, GenerationConfig(max_new_tokens=2, ignore_eos=True), "batch 1 greedy")]

    async def busy():  # warm-up waits for the engine to be idle
        stream = await engine.submit([5] * 8, GenerationConfig(max_new_tokens=200, ignore_eos=True))
        async for _ in stream:
            pass

    with started(engine):
        holder = threading.Thread(target=lambda: asyncio.run(busy()))
        holder.start()
        assert wait_for(lambda: engine.num_in_flight == 1, 30)
        server, thread, url = _serve_with_lifespan(create_app(engine, served_model_name=MODEL, warmup=plan))
        try:
            health = httpx.get(url + "/health", timeout=10).json()
            assert health == {"status": "warming", "warmup": "0/1 steps compiled"}, health
            assert wait_for(lambda: httpx.get(url + "/health", timeout=10).json() == {"status": "ready"}, 120)
        finally:
            holder.join(120)
            server.should_exit = True
            thread.join(60)


def test_serve_sigterm_under_load_ends_every_stream_with_done(tmp_path):
    proc, url = start_tiny_serve(tmp_path, "engine.num_blocks=128", "engine.max_num_seqs=4", "drain_timeout_s=2",
                                 "log_level=warning", "warmup_batch_sizes=[1,4]", "warmup_background=false",
                                 stdout=open(tmp_path / "server.log", "w"))
    log = lambda: (tmp_path / "server.log").read_text()[-3000:]  # noqa: E731
    try:
        assert wait_healthy(proc, url, 300), log()
        body = {"model": "tiny", "messages": USER, "max_tokens": 450, "ignore_eos": True, "stream": True}
        streams: list[list[str]] = [[] for _ in range(6)]
        started_streams = threading.Semaphore(0)

        def stream(i):
            with httpx.stream("POST", url + CHAT, json={**body, "seed": i}, timeout=120) as r:
                assert r.status_code == 200
                started_streams.release()
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        streams[i].append(line[5:].strip())

        readers = [threading.Thread(target=stream, args=(i,)) for i in range(6)]
        for t in readers:
            t.start()
        for _ in readers:  # every stream has its headers (4 decoding, 2 queued)
            assert started_streams.acquire(timeout=120)
        assert wait_for(lambda: any(len(s) > 3 for s in streams), 60)
        proc.send_signal(signal.SIGTERM)
        for t in readers:
            t.join(120)
        assert proc.wait(120) == 0
        cut = 0
        for events in streams:
            assert events and events[-1] == "[DONE]", (events[-2:], log())
            last = json.loads(events[-2])
            if "error" in last:
                assert last["error"]["code"] == "shutting_down", last
                cut += 1
            else:
                assert last["choices"][0]["finish_reason"] == "length"
        assert cut >= 1  # 450 tokens each do not fit the 2 s drain
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
