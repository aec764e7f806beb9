"""`puyu serve`: the OpenAI-compatible server (a thin shell over `puyu_jax.serve.api`).

    puyu serve MODEL [--host 127.0.0.1] [--port 23333] [--api-keys k1,k2] [--quant int4] [--kv int8]
                     [--tp N] [--max-num-seqs N] [--max-model-len N] [--config FILE] [key=value ...]

Without --config the defaults are `configs/serve/default.yaml`. Before the port opens the steps
for `warmup_batch_sizes` are compiled; the rest of the warm-up plan (every batch bucket x sampling
feature set, `puyu_jax.serve.warmup`) compiles in the background while /health says "warming".

SIGTERM (or Ctrl-C), in order: new requests get 503, in-flight ones may finish for up to
`drain_timeout_s`, the rest are aborted (their streams end with an error event and [DONE]), then
uvicorn stops and the process exits 0. If the engine stops on a fault in its shared state, /health
says so and the process exits 1 (for a supervisor to restart it).
"""

from __future__ import annotations

import signal
import sys
import threading

from puyu_jax.serve.api.config import ServeConfig
from puyu_jax.serve.config import KV_DTYPES

__all__ = ["add_parser", "build_server", "run_server", "ServeConfig"]

_FLAGS = (
    ("host", "host"), ("port", "port"), ("served_model_name", "served_model_name"), ("chat_template", "chat_template"),
    ("max_concurrency", "max_concurrency"), ("drain_timeout_s", "drain_timeout_s"), ("quant", "engine.quant"),
    ("kv", "engine.kv_dtype"), ("tp", "engine.tp"), ("max_num_seqs", "engine.max_num_seqs"),
    ("max_model_len", "engine.max_model_len"), ("dtype", "engine.dtype"),
)


def _overrides(args) -> list:
    out: list = []
    overrides = list(args.overrides)
    if args.model is not None:
        if "=" in args.model:  # `puyu serve --config f.yaml port=1`: no MODEL given
            overrides.insert(0, args.model)
        else:
            out.append(("model", args.model))
    for flag, key in _FLAGS:
        value = getattr(args, flag)
        if value is not None:
            out.append((key, value))
    if args.api_keys is not None:
        out.append(("api_keys", [k.strip() for k in args.api_keys.split(",") if k.strip()]))
    return out + overrides


def build_server(cfg: ServeConfig, engine=None):
    """Loads the model (unless `engine`, an `LLMEngine`, is given), compiles the first steps, starts the
    engine loop and returns a ready `uvicorn.Server` (its app drains on SIGTERM, stops on engine death)."""
    import uvicorn

    from puyu_jax.serve.api.app import create_app
    from puyu_jax.serve.async_engine import AsyncEngine
    from puyu_jax.serve.engine import LLMEngine
    from puyu_jax.serve.warmup import warmup_plan

    if engine is None:
        engine = LLMEngine.from_pretrained(cfg.model, cfg.engine)
    if cfg.warmup_batch_sizes:
        seconds = engine.warmup(cfg.warmup_batch_sizes)
        print(f"puyu serve: compiled the steps for batch sizes {list(cfg.warmup_batch_sizes)} in {seconds:.1f} s",
              flush=True)
    plan = warmup_plan(engine.config, engine.max_model_len, done=tuple(cfg.warmup_batch_sizes)) \
        if cfg.warmup_background else None
    async_engine = AsyncEngine(engine)
    async_engine.start()
    app = create_app(async_engine, served_model_name=cfg.model_name, api_keys=cfg.api_keys,
                     max_concurrency=cfg.max_concurrency, chat_template=cfg.chat_template,
                     drain_timeout_s=cfg.drain_timeout_s, warmup=plan)
    # streams may still write their last events after the engine's drain time
    config = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=cfg.access_log,
                            timeout_graceful_shutdown=int(cfg.drain_timeout_s) + 45)
    class DrainingServer(uvicorn.Server):
        """uvicorn, with the app's drain started as soon as SIGTERM / SIGINT arrives: new requests get 503
        and in-flight ones finish or are cut (error event + [DONE]) before uvicorn stops."""

        def handle_exit(self, sig, frame):
            app.state.begin_drain()
            super().handle_exit(sig, frame)

    server = DrainingServer(config)
    # a fault in the engine's shared state: in-flight streams got their error; /health says so for a moment,
    # then the server stops and the process exits non-zero (a supervisor restarts it)
    async_engine.add_death_listener(lambda e: threading.Timer(2.0, setattr, (server, "should_exit", True)).start())
    return server


def run_server(cfg: ServeConfig, engine=None) -> int:
    """Serves until SIGTERM / SIGINT, draining in-flight requests; returns the exit status
    (0 after a drain, 1 when the engine stopped on a fault)."""
    from sse_starlette.sse import AppStatus

    # event streams must run to their end on SIGTERM (the drain), not be cut when it arrives
    AppStatus.disable_automatic_graceful_drain()
    server = build_server(cfg, engine)
    # uvicorn handles SIGTERM (drain, then shut down) and afterwards re-raises it to the handler that was
    # installed before it: a no-op one makes a drained shutdown exit with status 0
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    print(f"puyu serve: {cfg.model} as {cfg.model_name!r} on http://{cfg.host}:{cfg.port} "
          f"(chat page at /, API at /v1)", file=sys.stderr, flush=True)
    server.run()
    async_engine = server.config.app.state.server.engine
    if async_engine.dead:
        print(f"puyu serve: the engine stopped: {async_engine.error!r}", file=sys.stderr, flush=True)
        return 1
    return 0


def _cmd_serve(args) -> int:
    from puyu_jax.config import configs_dir, load_config

    source = args.config
    if source is None and (configs_dir() / "serve" / "default.yaml").is_file():
        source = configs_dir() / "serve" / "default.yaml"
    cfg = load_config(ServeConfig, source, _overrides(args))
    if args.quant is None and "quant" not in " ".join(args.overrides) + _read(args.config):
        cfg = _native_by_default(cfg)
    return run_server(cfg)


def _read(path) -> str:
    from pathlib import Path

    return Path(path).read_text() if path else ""


def _native_by_default(cfg: ServeConfig) -> ServeConfig:
    """A GGUF holding Q4_0 / Q4_1 / Q8_0 tensors is served from them unless --quant says otherwise."""
    from dataclasses import replace

    from puyu_jax.pretrained import resolve
    from puyu_jax.quant.gguf import native_types

    kind, path = resolve(cfg.model)
    types = native_types(path) if kind == "gguf" else {}
    if not types:
        return cfg
    print(f"puyu serve: {path.name} holds {', '.join(sorted(types))} tensors: serving them as they are "
          "(--quant native; --quant none for float32)", file=sys.stderr, flush=True)
    return replace(cfg, engine=replace(cfg.engine, quant="native"))


class _IntermixedParser:
    """Lets `key=value` overrides follow the options (`puyu serve M --port 1 engine.tp=2`), which plain
    argparse refuses once the positionals were consumed before the first option."""

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixing", False):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def add_parser(sub) -> None:
    """Registers `puyu serve` on the top-level subparsers."""
    import argparse

    p = sub.add_parser(
        "serve",
        help="serve a model over the OpenAI API (chat, completions, tools, streaming) with a web chat page",
        description="Serve MODEL with continuous batching over the OpenAI API: /v1/models, /v1/completions, "
                    "/v1/chat/completions; /health, /metrics (Prometheus) and a chat page at /.",
        epilog="Any ServeConfig field can be set as key=value, e.g. engine.kv_cache_memory_gb=2 max_concurrency=64.\n"
               "Examples:\n  puyu serve smollm2\n  puyu serve out/smollm2 --port 8000 --api-keys sk-1,sk-2 --kv int8\n"
               "  puyu serve --config configs/serve/default.yaml engine.max_num_seqs=64",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="model source (see `puyu --help`); default from the config: smollm2")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 23333)")
    p.add_argument("--api-keys", help="comma-separated bearer keys clients must send")
    p.add_argument("--served-model-name", help="the model name clients use (default: the source's name)")
    p.add_argument("--chat-template", help="template name (internlm2, chatml, llama-3, ...) instead of the model's own")
    p.add_argument("--quant", choices=("none", "int4", "w8a8", "native"),
                   help="weight quantization: int4 or w8a8 (SmoothQuant) on load, or native: a GGUF's Q4_0/Q4_1/Q8_0 "
                        "tensors as they are (the default for such a GGUF)")
    p.add_argument("--kv", choices=KV_DTYPES, help="KV-cache dtype (int8 / int4: per-token, per-head scales)")
    p.add_argument("--tp", type=int, help="tensor-parallel degree")
    p.add_argument("--max-num-seqs", type=int, help="sequences decoded together")
    p.add_argument("--max-model-len", type=int, help="context limit (default: the model's)")
    p.add_argument("--max-concurrency", type=int, help="requests in flight before 429 (0: no limit)")
    p.add_argument("--drain-timeout-s", type=float, help="on SIGTERM, seconds in-flight requests may still run")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype")
    p.add_argument("--config", help="a ServeConfig YAML (see configs/serve/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(fn=_cmd_serve)
    p.__class__ = type("ServeParser", (_IntermixedParser, type(p)), {})
