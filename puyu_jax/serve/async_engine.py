"""The engine driven by a background thread, for asyncio servers.

The engine is single-threaded: one loop thread owns it. Requests and aborts reach that
thread through a command queue and are applied between steps, so an HTTP event loop
never waits on a model step. Outputs go back to each request's asyncio queue with
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

from puyu_jax.serve.config import GenerationConfig
from puyu_jax.serve.engine import LLMEngine
from puyu_jax.serve.errors import EngineDeadError
from puyu_jax.serve.outputs import EngineStats, RequestOutput

log = logging.getLogger(__name__)


class AsyncEngine:
    """Runs `LLMEngine.step` in a loop thread; `generate` is an async iterator of outputs."""

    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self._commands: queue.Queue = queue.Queue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._accepting = True
        self.error: BaseException | None = None
        self._stats = engine.stats()
        self._finish_listeners: list[Callable[[RequestOutput], None]] = []
        self._step_listeners: list[Callable[[EngineStats], None]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="puyu-engine", daemon=True)
            self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def dead(self) -> bool:
        return self.error is not None

    def add_finish_listener(self, fn: Callable[[RequestOutput], None]) -> None:
        """fn(output) is called (in the loop thread) for every finished request."""
        self._finish_listeners.append(fn)

    def add_step_listener(self, fn: Callable[[EngineStats], None]) -> None:
        """fn(stats) is called (in the loop thread) after every step."""
        self._step_listeners.append(fn)

    def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Stops accepting requests, lets in-flight ones finish for up to drain_timeout_s,
        aborts the rest and stops the loop thread."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while self.is_running and self._streams and time.monotonic() < deadline:
            time.sleep(0.02)
        for rid in list(self._streams):
            self.abort(rid)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------------ requests

    async def generate(self, prompt, gen: GenerationConfig = GenerationConfig(), request_id: str | None = None
                       ) -> AsyncIterator[RequestOutput]:
        """Submits a request and yields its outputs until it finishes.

        Raises QueueFullError, PromptTooLongError or ValueError (from the engine) and
        EngineDeadError before the first output. Closing the iterator early (or
        cancelling the task) aborts the request and frees its KV blocks.
        """
        if self.error is not None:
            raise EngineDeadError(f"the engine stopped: {self.error!r}")
        if not self._accepting:
            raise EngineDeadError("the engine is shutting down")
        self.start()
        rid = request_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        stream: asyncio.Queue = asyncio.Queue()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._streams[rid] = (loop, stream)
        self._commands.put(("add", rid, prompt, gen, time.time(), future))
        self._wake.set()
        finished = False
        try:
            await asyncio.wrap_future(future)
            while True:
                out = await stream.get()
                if isinstance(out, BaseException):
                    raise out
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            self._streams.pop(rid, None)
            add_failed = future.done() and future.exception() is not None
            if not finished and not add_failed:  # commands are FIFO: an abort after a pending add lands
                self.abort(rid)

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))
        self._wake.set()

    # ------------------------------------------------------------------ the loop thread

    def _apply_commands(self) -> None:
        while True:
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return
            if cmd[0] == "add":
                _, rid, prompt, gen, arrival, future = cmd
                try:
                    self.engine.add_request(rid, prompt, gen, arrival_time=arrival)
                except BaseException as e:  # handed to the caller
                    future.set_exception(e)
                else:
                    future.set_result(rid)
            else:
                self.engine.abort_request(cmd[1])

    def _deliver(self, out: RequestOutput | BaseException, rid: str) -> None:
        target = self._streams.get(rid)
        if target is None:
            return
        loop, stream = target
        try:
            loop.call_soon_threadsafe(stream.put_nowait, out)
        except RuntimeError:  # the client's loop is gone
            pass

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._apply_commands()
                if not self.engine.has_unfinished_requests():
                    self._stats = self.engine.stats()
                    self._wake.wait(timeout=0.05)
                    self._wake.clear()
                    continue
                outputs = self.engine.step()
                self._stats = self.engine.stats()
                for fn in self._step_listeners:
                    fn(self._stats)
                for out in outputs:
                    if out.finished:
                        for fn in self._finish_listeners:
                            fn(out)
                    self._deliver(out, out.request_id)
        except BaseException as e:  # a failed step leaves the engine unusable: fail every stream
            log.exception("engine loop crashed")
            self.error = e
            dead = EngineDeadError(f"the engine stopped: {e!r}")
            for rid in list(self._streams):
                self._deliver(dead, rid)
