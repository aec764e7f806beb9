"""Request lifecycle: a client that leaves frees its KV blocks; SIGTERM drains in-flight requests and exits 0."""

import json
import signal
import threading

import httpx
import pytest
from serve_api_helpers import MODEL, served, smollm2_tokenizer, start_tiny_serve, wait_for, wait_healthy

USER = [{"role": "user", "content": "Write a long story about the sea."}]


@pytest.fixture(scope="module")
def server():
    with served() as (url, engine):
        yield url, engine


def test_serve_disconnect_mid_stream_frees_blocks(server):
    url, engine = server
    assert wait_for(lambda: engine.stats().num_running == 0)
    baseline = engine.stats().num_blocks_used
    body = {"model": MODEL, "messages": USER, "max_tokens": 400, "seed": 1, "stream": True}
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            seen = 0
            for line in lines:
                if line.startswith("data:") and '"content"' in line:
                    seen += 1
                    if seen == 3:
                        break
            assert engine.stats().num_blocks_used > baseline  # the request holds blocks while it streams
        # leaving the `with` closes the connection mid-stream
    assert wait_for(lambda: engine.stats().num_blocks_used == baseline and engine.stats().num_running == 0, 20), \
        engine.stats()


def test_serve_disconnect_before_a_non_streamed_answer_frees_blocks(server):
    url, engine = server
    assert wait_for(lambda: engine.stats().num_running == 0)
    baseline = engine.stats().num_blocks_used
    body = {"model": MODEL, "messages": USER, "max_tokens": 450, "seed": 2}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(120, read=1.0))
    assert wait_for(lambda: engine.stats().num_blocks_used == baseline and engine.stats().num_running == 0, 20), \
        engine.stats()


def test_serve_sigterm_drains_in_flight_requests(tmp_path):
    proc, url = start_tiny_serve(tmp_path, "engine.num_blocks=64", "engine.max_num_seqs=4", "drain_timeout_s=60",
                                 "log_level=warning", "warmup_background=false")
    try:
        assert wait_healthy(proc, url), proc.stdout.read() if proc.poll() is not None else ""
        body = {"model": "tiny", "messages": USER, "max_tokens": 48, "seed": 3, "stream": True}
        warm = httpx.post(url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, timeout=120)
        assert warm.status_code == 200

        events, first = [], threading.Event()

        def stream():
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        events.append(line[5:].strip())
                        if '"content"' in line:
                            first.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first.wait(60)
        proc.send_signal(signal.SIGTERM)
        reader.join(120)
        assert proc.wait(120) == 0
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"  # ran to its limit after the SIGTERM
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert len(smollm2_tokenizer().encode(text)) >= 40
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/health", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_cli_flags_and_overrides_make_the_config(tmp_path):
    from puyu_jax.cli import build_parser
    from puyu_jax.config import ConfigError, load_config
    from puyu_jax.serve.cli import ServeConfig, _overrides

    args = build_parser().parse_args(["serve", "out/model", "--port", "8000", "--api-keys", "k1, k2", "--kv", "int8",
                                      "--tp", "2", "--max-num-seqs", "8", "--config", "configs/serve/default.yaml",
                                      "engine.kv_cache_memory_gb=2", "max_concurrency=64"])
    cfg = load_config(ServeConfig, args.config, _overrides(args))
    assert (cfg.model, cfg.port, cfg.api_keys, cfg.max_concurrency, cfg.model_name) == (
        "out/model", 8000, ("k1", "k2"), 64, "model")
    assert (cfg.engine.kv_dtype, cfg.engine.tp, cfg.engine.max_num_seqs, cfg.engine.kv_cache_memory_gb) == (
        "int8", 2, 8, 2.0)
    with pytest.raises(ConfigError, match="max_concurency"):
        load_config(ServeConfig, None, ["max_concurency=3"])
