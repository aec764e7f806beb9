"""Shared pieces of the API server tests: a tiny random model with the real SmolLM2 tokenizer, served."""

from __future__ import annotations

import contextlib
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/http_server.py

from http_server import serving  # noqa: E402

MODEL = "tiny-test"


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    from puyu_jax.models.gguf import find_smollm2_gguf
    from puyu_jax.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(find_smollm2_gguf())


def tiny_model_config():
    """configs/models/tiny.yaml with the SmolLM2 vocabulary (the content of its output does not matter)."""
    from puyu_jax.pretrained import load_model_config

    return load_model_config("tiny").replace(vocab_size=smollm2_tokenizer().vocab_size, max_position_embeddings=512)


def tiny_engine(**engine_kw):
    """A fresh `LLMEngine` over the tiny random model (seeded weights: the same model every time)."""
    from puyu_jax.models.params import init_model
    from puyu_jax.serve.config import EngineConfig
    from puyu_jax.serve.engine import LLMEngine

    kw = dict(num_blocks=256, max_num_seqs=16, block_size=16)
    kw.update(engine_kw)
    return LLMEngine(init_model(tiny_model_config(), 0), smollm2_tokenizer(), EngineConfig(**kw), model_name="tiny")


@functools.lru_cache(maxsize=1)
def shared_async_engine():
    """One started engine per test process (compiled shapes are reused across test files)."""
    from puyu_jax.serve.async_engine import AsyncEngine

    engine = AsyncEngine(tiny_engine(max_waiting=256))
    engine.start()
    return engine


@contextlib.contextmanager
def served(async_engine=None, **app_kw):
    """Serves an app over `async_engine` (the shared one by default) on 127.0.0.1; yields (url, engine)."""
    from puyu_jax.serve.api.app import create_app

    async_engine = async_engine or shared_async_engine()
    app_kw.setdefault("served_model_name", MODEL)
    with serving(create_app(async_engine, **app_kw)) as url:
        yield url, async_engine


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_tiny_serve(tmp_path, *overrides: str, stdout=None):
    """Starts `puyu serve` on a tiny random checkpoint (SmolLM2's tokenizer) in a subprocess.

    Returns (process, base url); the caller waits for health with `wait_healthy` and stops it."""
    import os
    import subprocess

    from puyu_jax.checkpoint import save_checkpoint
    from puyu_jax.models.params import init_model, to_flat

    cfg = tiny_model_config()
    ckpt = tmp_path / "tiny-chat"
    save_checkpoint(ckpt, cfg, to_flat(init_model(cfg, 0)))
    smollm2_tokenizer().save(ckpt / "tokenizer")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "puyu_jax.cli", "serve", str(ckpt), "--port", str(port), "--served-model-name", "tiny",
         *overrides],
        stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ})
    return proc, f"http://127.0.0.1:{port}"


def wait_healthy(proc, url: str, timeout: float = 180) -> bool:
    """True once `url`/health answers 200; False if the process exits or the time runs out."""
    import httpx

    def up():
        try:
            return httpx.get(url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return proc.poll() is not None

    return wait_for(up, timeout, 0.2) and proc.poll() is None
