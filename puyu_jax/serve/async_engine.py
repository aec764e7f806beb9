"""The engine driven by a background thread, for asyncio servers.

The engine is single-threaded: one loop thread owns it. A request is checked on the caller's
side (`LLMEngine.validate_request`, in a worker thread) and its stream returned at once;
requests and aborts then reach the loop thread through a command queue and are applied
between steps, so an HTTP event loop never waits on a model step (nor on a compile). Outputs go back to each request's asyncio queue with
`call_soon_threadsafe`.

Faults: a request whose step raised is ended alone (its stream raises `RequestFailedError`,
the others go on); an exception escaping `LLMEngine.step` means shared state (the KV pool,
the scheduler) is broken: the loop stops, every stream raises `EngineDeadError`, `dead` is
true and the death listeners run (`puyu serve` then exits non-zero).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

from puyu_jax.serve.config import GenerationConfig
from puyu_jax.serve.engine import LLMEngine
from puyu_jax.serve.errors import EngineDeadError, QueueFullError, RequestFailedError
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
        self._death_listeners: list[Callable[[BaseException], None]] = []
        self._shutdown_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending = 0  # requests checked and queued that the loop has not taken yet

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

    def add_death_listener(self, fn: Callable[[BaseException], None]) -> None:
        """fn(error) is called (in the loop thread) if the loop stops on a fault in shared state."""
        self._death_listeners.append(fn)

    @property
    def accepting(self) -> bool:
        return self._accepting

    def shutdown(self, drain_timeout_s: float = 30.0) -> None:
        """Stops accepting requests, lets in-flight ones finish for up to drain_timeout_s,
        aborts the rest (their streams end with finish_reason "abort") and stops the loop
        thread once they are reported. A second call waits for the first."""
        self._accepting = False
        with self._shutdown_lock:
            deadline = time.monotonic() + drain_timeout_s
            while self.is_running and self._streams and time.monotonic() < deadline:
                time.sleep(0.02)
            for rid in list(self._streams):
                self.abort(rid)
            # let the loop report the aborts before it stops
            deadline = time.monotonic() + 30
            while self.is_running and self._streams and time.monotonic() < deadline:
                time.sleep(0.02)
            self._stop.set()
            self._wake.set()
            if self._thread is not None:
                self._thread.join(timeout=10)
            for rid in list(self._streams):  # not reported in time: end them anyway
                self._deliver(EngineDeadError("the server shut down before this request finished"), rid)

    def stats(self) -> EngineStats:
        return self._stats

    @property
    def num_in_flight(self) -> int:
        return len(self._streams)

    # ------------------------------------------------------------------ requests

    async def submit(self, prompt, gen: GenerationConfig = GenerationConfig(), request_id: str | None = None
                     ) -> "RequestStream":
        """Checks a request, queues it and returns its output stream at once (before the engine's
        loop takes it: a loop busy with a long step, e.g. compiling, does not hold the caller).

        Raises QueueFullError, PromptTooLongError or ValueError (the engine's checks, run here)
        and EngineDeadError. Iterating the stream yields outputs until the request finishes
        (or raises RequestFailedError / EngineDeadError, or an error the engine's loop met when it
        took the request); closing it early (`close`, `aclose`, or a cancelled `__anext__`) aborts
        the request and frees its KV blocks.
        """
        (stream,) = await self.submit_batch([(prompt, gen)], [request_id])
        return stream

    async def submit_batch(self, items: list[tuple[object, GenerationConfig]],
                           request_ids: list[str | None] | None = None) -> list["RequestStream"]:
        """`submit` for several (prompt, gen) at once: the engine takes them in the same step (one
        batch). If one is refused, none is queued and its error is raised."""
        if self.error is not None:
            raise EngineDeadError(f"the engine stopped: {self.error!r}")
        if not self._accepting:
            raise EngineDeadError("the engine is shutting down")
        self.start()
        loop = asyncio.get_running_loop()
        # tokenizing a text prompt or compiling a grammar can take a while: off the event loop
        checked = await loop.run_in_executor(None, lambda: [self.engine.validate_request(p, g) for p, g in items])
        rids = [rid or uuid.uuid4().hex for rid in request_ids or [None] * len(items)]
        seen: set[str] = set()
        for rid in rids:
            if rid in self._streams or rid in seen:
                raise ValueError(f"request id {rid!r} is already in use")
            seen.add(rid)
        with self._pending_lock:
            waiting = len(self.engine.scheduler.waiting) + self._pending
            if waiting + len(items) > self.engine.config.max_waiting:
                raise QueueFullError(f"{waiting} requests are waiting; try again later")
            self._pending += len(items)
        adds, streams = [], []
        for (_, gen), ids, rid in zip(items, checked, rids):
            outputs: asyncio.Queue = asyncio.Queue()
            self._streams[rid] = (loop, outputs)
            adds.append(("add", rid, ids, gen, time.time()))
            streams.append(RequestStream(self, rid, outputs))
        self._commands.put(("batch", adds))
        self._wake.set()
        return streams

    async def generate(self, prompt, gen: GenerationConfig = GenerationConfig(), request_id: str | None = None
                       ) -> AsyncIterator[RequestOutput]:
        """`submit` and iterate in one: yields the request's outputs until it finishes."""
        stream = await self.submit(prompt, gen, request_id)
        try:
            async for out in stream:
                yield out
        finally:
            stream.close()

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
            for c in cmd[1] if cmd[0] == "batch" else [cmd]:
                if c[0] == "add":
                    _, rid, prompt, gen, arrival = c
                    with self._pending_lock:
                        self._pending -= 1
                    try:
                        self.engine.add_request(rid, prompt, gen, arrival_time=arrival)
                    except Exception as e:  # noqa: BLE001 - e.g. the queue filled meanwhile: ends that stream
                        self._deliver(e, rid)
                else:
                    self.engine.abort_request(c[1])

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
                for rid, exc in self.engine.take_failures():
                    self._deliver(RequestFailedError(rid, exc), rid)
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
            for fn in self._death_listeners:
                fn(e)


class RequestStream:
    """The outputs of one accepted request (an async iterator); `close` aborts it if unfinished."""

    def __init__(self, engine: AsyncEngine, request_id: str, outputs: asyncio.Queue):
        self.request_id = request_id
        self._engine, self._outputs, self._open = engine, outputs, True

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if not self._open:
            raise StopAsyncIteration
        try:
            out = await self._outputs.get()
        except BaseException:  # cancelled: the consumer went away
            self.close()
            raise
        if isinstance(out, BaseException):
            self._end(abort=False)
            raise out
        if out.finished:
            self._end(abort=False)
        return out

    def _end(self, abort: bool) -> None:
        if self._open:
            self._open = False
            self._engine._streams.pop(self.request_id, None)
            if abort:  # commands are FIFO: the abort lands after the add
                self._engine.abort(self.request_id)

    def close(self) -> None:
        self._end(abort=True)

    async def aclose(self) -> None:
        self.close()

    def __del__(self):  # a stream dropped unread must not keep its request running
        try:
            self._end(abort=True)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
