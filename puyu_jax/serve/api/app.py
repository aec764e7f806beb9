"""The OpenAI-compatible HTTP server over an `AsyncEngine` (FastAPI + SSE).

    GET  /                      the web chat page (and /favicon.ico)
    GET  /health                200 {"status": "ready"}, or {"status": "warming", "warmup": "12/40 ..."} while
                                programs still compile in the background; 503 while shutting down or when the
                                engine stopped
    GET  /metrics               Prometheus metrics (see `metrics.py`)
    GET  /v1/models             the served model
    POST /v1/completions        text completions (stream or not)
    POST /v1/chat/completions   chat completions with tools (stream or not)

With API keys every /v1 route needs `Authorization: Bearer KEY`. Errors use the OpenAI shape;
`errors.py` lists the status of each failure.

Under pressure: bodies are parsed, templates rendered and prompts tokenized in a worker pool
(text longer than the context could ever hold is refused with 413 before tokenizing), so the
event loop keeps answering /health and other streams. A streamed answer sends its headers as
soon as the engine accepted the request and `: ping` comments every `sse_ping_s` seconds while
it waits in the queue; the first data event carries the first token. `begin_drain()` (on
SIGTERM) refuses new requests with 503 and lets the engine finish or abort the in-flight ones
within the drain time: a cut stream gets an error event and `[DONE]`.

(No `from __future__ import annotations` here: FastAPI reads the route annotations at run time.)
"""

import asyncio
import concurrent.futures
import hmac
import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from puyu_jax.serve.api.chat import ChatPrompter, resolve_template
from puyu_jax.serve.api.errors import APIError, from_validation_error, install_handlers
from puyu_jax.serve.api.handlers import ChatHandler, CompletionHandler, ServerState
from puyu_jax.serve.api.metrics import CONTENT_TYPE, ServerMetrics
from puyu_jax.serve.api.protocol import ChatCompletionRequest, CompletionRequest

__all__ = ["create_app"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 16 << 20
_ENDPOINTS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/"}


def create_app(async_engine, *, served_model_name: str = "", api_keys: Sequence[str] = (), max_concurrency: int = 0,
               chat_template: str = "", drain_timeout_s: float = 30.0, sse_ping_s: float = 5.0, warmup=None,
               prep_workers: int = 4):
    """A FastAPI app serving `async_engine` with the OpenAI API.

    Args:
      async_engine: a started `AsyncEngine` (its `engine` supplies tokenizer, model config and context).
      served_model_name: the `model` clients name (default: the engine's model name).
      api_keys: accepted bearer keys; empty serves without authentication.
      max_concurrency: generation requests in flight at once (0: no limit besides the engine's queue);
        one more is answered 429 with Retry-After.
      chat_template: a template name or jinja source instead of the model's own.
      drain_timeout_s: on shutdown, how long in-flight requests may finish before they are aborted.
      sse_ping_s: keep-alive comment interval of event streams (also while the request is queued).
      warmup: steps (`puyu_jax.serve.warmup.warmup_plan`) compiled in the background once the app starts
        (lifespan); /health says "warming" until they are done.
      prep_workers: threads that parse bodies, render templates and tokenize prompts.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from sse_starlette import EventSourceResponse, ServerSentEvent

    from puyu_jax.serve.warmup import run_warmup

    engine = async_engine.engine
    tokenizer = engine.tokenizer
    if tokenizer is None:
        raise ValueError("the engine's model has no tokenizer; the API server needs one")
    template = resolve_template(tokenizer, engine.model_config.chat_template, chat_template)
    state = ServerState(
        engine=async_engine,
        model_name=served_model_name or engine.model_name,
        tokenizer=tokenizer,
        max_model_len=engine.max_model_len,
        prompter=ChatPrompter(tokenizer, template),
        metrics=ServerMetrics(async_engine.stats),
        max_concurrency=max_concurrency,
        max_prompt_chars=engine.max_model_len * _longest_token_chars(tokenizer),
        prep=concurrent.futures.ThreadPoolExecutor(max(1, prep_workers), thread_name_prefix="puyu-prep"),
    )
    warming = {"done": 0, "total": len(warmup or ()), "label": ""}
    # counted in the engine thread for every finished request, aborted ones included
    async_engine.add_finish_listener(state.metrics.observe_finished)
    keys = [k for k in api_keys if k]
    chat, completions = ChatHandler(state), CompletionHandler(state)

    drain_lock = threading.Lock()

    def begin_drain() -> threading.Thread:
        """Refuses new requests from now on and drains the engine in a thread (idempotent)."""
        with drain_lock:
            state.draining = True
            warm_task, loop = app.state.warm_task
            if warm_task is not None:  # its throwaway requests must not hold the drain
                loop.call_soon_threadsafe(warm_task.cancel)
            if app.state.drain_thread is None:
                app.state.drain_thread = threading.Thread(target=async_engine.shutdown, args=(drain_timeout_s,),
                                                          name="puyu-drain", daemon=True)
                app.state.drain_thread.start()
            return app.state.drain_thread

    def progress(done: int, total: int, label: str) -> None:
        warming.update(done=done, label=label)
        if done == total or done % 8 == 0:
            print(f"puyu serve: warm-up {done}/{total} ({label})", flush=True)

    async def warm():
        try:
            await run_warmup(async_engine, list(warmup), progress)
        except asyncio.CancelledError:
            warming["total"] = warming["done"]
            raise
        except Exception as e:  # noqa: BLE001 - the server serves without it; first use compiles instead
            log.warning("warm-up stopped: %r", e)
            warming["total"] = warming["done"]

    @asynccontextmanager
    async def lifespan(app):
        if warmup:
            app.state.warm_task = (asyncio.ensure_future(warm()), asyncio.get_running_loop())
        yield
        await asyncio.to_thread(begin_drain().join)
        state.prep.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="puyu OpenAI-compatible server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = state
    app.state.drain_thread = None
    app.state.warm_task = (None, None)
    app.state.begin_drain = begin_drain
    install_handlers(app)
    app.add_middleware(_CountRequests, metrics=state.metrics)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def authorize(request: Request) -> None:
        if not keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given.strip().encode(), k.encode()) for k in keys):
            raise APIError(401, "missing or wrong API key (send `Authorization: Bearer KEY`)",
                           type="authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def parse(request: Request, model):
        size = request.headers.get("content-length", "")
        if size.isdigit() and int(size) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is larger than {MAX_BODY_BYTES >> 20} MiB", code="body_too_large")
        try:
            req = await state.off_loop(model.model_validate_json, body or b"")
        except ValidationError as e:
            raise from_validation_error(e) from None
        req.check()
        return req

    def model_card() -> dict:
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "puyu",
                "root": engine.model_name, "max_model_len": state.max_model_len}

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon")

    @app.get("/health")
    async def health():
        if async_engine.dead:
            return JSONResponse({"status": f"engine stopped: {async_engine.error!r}"}, status_code=503)
        if state.draining:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        if warming["done"] < warming["total"]:
            return {"status": "warming", "warmup": f"{warming['done']}/{warming['total']} steps compiled"}
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def model(model: str, request: Request):
        authorize(request)
        if model != state.model_name:
            raise APIError(404, f"the model {model!r} does not exist", type="not_found_error", param="model",
                           code="model_not_found")
        return model_card()

    async def generate(request: Request, handler, schema):
        authorize(request)
        req = await parse(request, schema)
        state.acquire()
        released = False
        try:
            result = await handler.respond(request, req)
            if result is None:  # the client left before the answer
                return Response(status_code=499)
            if isinstance(result, dict):
                return JSONResponse(result)
            released = True
            return EventSourceResponse(_released(result, state), ping=sse_ping_s,
                                       ping_message_factory=lambda: ServerSentEvent(comment="ping"),
                                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        finally:
            if not released:
                state.release()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await generate(request, chat, ChatCompletionRequest)

    @app.post("/v1/completions")
    async def text_completions(request: Request):
        return await generate(request, completions, CompletionRequest)

    return app


def _longest_token_chars(tokenizer) -> int:
    """Characters of the longest vocabulary entry: no text of more than context x this many characters fits."""
    longest = 1
    for i in range(tokenizer.vocab_size):
        try:
            longest = max(longest, len(tokenizer.id_to_token(i)))
        except IndexError:  # holes in a vocabulary
            continue
    return longest


async def _released(stream, state: ServerState):
    """Passes the stream through and gives back its concurrency slot when it ends or is cancelled."""
    try:
        async for item in stream:
            yield item
    finally:
        state.release()
        await stream.aclose()


class _CountRequests:
    """ASGI middleware: counts answered HTTP requests by endpoint and status."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in _ENDPOINTS else ("/v1/models" if path.startswith("/v1/models/") else "other")
        status = {"code": 500}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
