"""The two generation endpoints: request -> GenerationConfig -> engine -> OpenAI response or SSE chunks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

from puyu_jax.serve.api.chat import ChatPrompt, ChatPrompter
from puyu_jax.serve.api.errors import APIError, error_body
from puyu_jax.serve.api.metrics import ServerMetrics
from puyu_jax.serve.api.protocol import ChatCompletionRequest, CompletionRequest
from puyu_jax.serve.api.tool_parsers import ToolCallParser
from puyu_jax.serve.config import GenerationConfig
from puyu_jax.serve.errors import EngineDeadError, PromptTooLongError, QueueFullError, RequestFailedError
from puyu_jax.serve.outputs import CompletionOutput, RequestOutput, TokenLogprob

log = logging.getLogger(__name__)

DONE = "[DONE]"


@dataclass
class ServerState:
    """What the handlers share: the engine, the model's facts, the chat prompter, limits and metrics."""

    engine: object  # AsyncEngine
    model_name: str
    tokenizer: object
    max_model_len: int
    prompter: ChatPrompter
    metrics: ServerMetrics
    max_concurrency: int = 0
    max_prompt_chars: int = 0  # longer text cannot fit the context whatever it tokenizes to (0: no check)
    prep: concurrent.futures.Executor | None = None  # where templates are rendered and prompts tokenized
    inflight: int = 0
    draining: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    async def off_loop(self, fn, *args):
        """fn(*args) in the preparation pool, so the event loop keeps serving meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.prep, fn, *args)

    def check_chars(self, n_chars: int, param: str) -> None:
        """The cheap check before tokenizing: text longer than the context times the longest token is refused."""
        if self.max_prompt_chars and n_chars > self.max_prompt_chars:
            raise APIError(413, f"the prompt has {n_chars} characters; no tokenization of that fits this model's "
                                f"context of {self.max_model_len} tokens (at most {self.max_prompt_chars} characters)",
                           param=param, code="context_length_exceeded")

    def acquire(self) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down", type="service_unavailable", code="shutting_down")
        if self.max_concurrency and self.inflight >= self.max_concurrency:
            raise APIError(429, f"the server is at its limit of {self.max_concurrency} concurrent requests",
                           type="rate_limit_error", code="too_many_requests", headers={"Retry-After": "1"})
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1


class ClientGone(Exception):
    """The client disconnected before a non-streamed answer was ready."""


# ------------------------------------------------------------------------------------------ shared


def engine_error(e: Exception) -> APIError:
    """An engine exception as the API error answered to the client."""
    if isinstance(e, QueueFullError):
        wait = max(1, math.ceil(e.retry_after_s))
        return APIError(429, str(e), type="rate_limit_error", code="queue_full", headers={"Retry-After": str(wait)})
    if isinstance(e, PromptTooLongError):
        if e.param in ("max_tokens", "max_completion_tokens", "max_new_tokens"):
            return APIError(400, str(e), param=e.param, code="context_length_exceeded")
        return APIError(413, str(e), param=e.param, code="context_length_exceeded")
    if isinstance(e, EngineDeadError):
        return APIError(503, f"the engine is not running: {e}", type="service_unavailable", code="engine_dead")
    if isinstance(e, RequestFailedError):
        return APIError(500, f"the engine failed on this request: {type(e.cause).__name__}: {e.cause}",
                        type="internal_error", code="request_failed")
    if isinstance(e, APIError):
        return e
    if isinstance(e, ValueError):
        return APIError(400, str(e), param=_param_of(str(e)))
    return APIError(500, f"{type(e).__name__}: {e}", type="internal_error")


def check_not_cut(outs: list[RequestOutput]) -> None:
    """A non-streamed answer that shutdown aborted is a 503, not a truncated 200."""
    if any(c.finish_reason == "abort" for o in outs for c in o.outputs):
        raise APIError(503, cut_error()["error"]["message"], type="service_unavailable", code="shutting_down")


def cut_error() -> dict:
    """The event a stream gets when shutdown aborts it before it finished."""
    return error_body("the server is shutting down; this answer was cut before it finished", "service_unavailable",
                      None, "shutting_down")


def _param_of(message: str) -> str | None:
    head = message.split("=", 1)[0].split(" ", 1)[0].rstrip(":")
    return head if head.isidentifier() else None


def check_model(state: ServerState, model: str) -> None:
    if model != state.model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {state.model_name!r}",
                       type="not_found_error", param="model", code="model_not_found")


def token_budget(state: ServerState, n_prompt: int, requested: int | None, param: str, prompt_param: str) -> int:
    """max_new_tokens for a prompt of n_prompt tokens (the rest of the context when not requested)."""
    room = state.max_model_len - n_prompt
    if room <= 0:
        raise APIError(413, f"the prompt has {n_prompt} tokens; this model's context is {state.max_model_len} tokens",
                       param=prompt_param, code="context_length_exceeded")
    if requested is None:
        return room
    if requested > room:
        raise APIError(400, f"{param}={requested} does not fit: the prompt has {n_prompt} tokens and the context is "
                            f"{state.max_model_len} tokens (at most {room} new tokens)",
                       param=param, code="context_length_exceeded")
    return requested


def generation_config(req, *, max_new: int, stop: list[str], logprobs: bool, top_logprobs: int,
                      skip_special: bool = True, prompt_logprobs: int | None = None,
                      guided: dict | None = None) -> GenerationConfig:
    """guided: the output constraint as GenerationConfig keywords (json_schema=..., regex=..., ...)."""
    try:
        return GenerationConfig(
            max_new_tokens=max_new,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=0 if req.top_k in (None, -1) else req.top_k,
            min_p=req.min_p or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            seed=req.seed,
            stop=tuple(dict.fromkeys(stop)),
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            n=req.n,
            skip_special_tokens=skip_special,
            prompt_logprobs=prompt_logprobs,
            ignore_eos=req.ignore_eos,
            **(guided or {}),
        )
    except ValueError as e:
        raise APIError(400, str(e), param=_param_of(str(e))) from e


async def start(state: ServerState, prompt, gen: GenerationConfig, request_id: str):
    """Submits one prompt and returns its stream once the engine accepted it (before any token, so
    streamed answers can send their headers at once). Engine refusals become APIErrors here."""
    try:
        return await state.engine.submit(prompt, gen, request_id=request_id)
    except (QueueFullError, PromptTooLongError, EngineDeadError, ValueError) as e:
        raise engine_error(e) from e


async def merged(streams: list):
    """Outputs of several requests as (prompt index, output), as they come. Every stream is closed at
    the end (which aborts those that did not finish)."""
    try:
        if len(streams) == 1:
            async for out in streams[0]:
                yield 0, out
            return
        async for item in _interleaved(streams):
            yield item
    finally:
        for stream in streams:
            stream.close()


async def _interleaved(streams: list):
    queue: asyncio.Queue = asyncio.Queue()
    end = object()

    async def pump(i, stream):
        try:
            async for out in stream:
                await queue.put((i, out))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, e))
        finally:
            queue.put_nowait((i, end))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, item = await queue.get()
            if item is end:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()


async def collect(request, streams) -> list[RequestOutput]:
    """The final output of every stream; the requests are cancelled if the client goes away."""

    async def consume():
        last: dict[int, RequestOutput] = {}
        async for i, out in merged(streams):
            last[i] = out
        return [last[i] for i in range(len(streams))]

    task = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watcher.cancel()
    if task not in done:
        raise ClientGone()
    try:
        return task.result()
    except Exception as e:  # noqa: BLE001 - every engine failure is answered in the OpenAI shape
        raise engine_error(e) from e


async def _disconnected(request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _usage(outs: list[RequestOutput]) -> dict:
    p = sum(len(o.prompt_token_ids) for o in outs)
    c = sum(len(ch.token_ids) for o in outs for ch in o.outputs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _rid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _sse(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ------------------------------------------------------------------------------------------ logprobs


def _chat_logprobs(items: list[TokenLogprob] | None, k: int) -> dict | None:
    if items is None:
        return None
    return {"content": [{
        "token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8")),
        "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))} for _, s, lp in t.top[:k]],
    } for t in items], "refusal": None}


def _prompt_logprobs(out: RequestOutput, k: int, tokenizer) -> dict:
    """The prompt's tokens with their log-probs (the first has none), offsets from 0."""
    items = out.prompt_logprobs or []
    tokens, lps, tops, offsets, offset = [], [], [], [], 0
    for i, t in enumerate(items):
        if t is None:  # the first token: nothing precedes it
            piece = tokenizer.decode([out.prompt_token_ids[i]])
            tokens.append(piece)
            lps.append(None)
            tops.append(None)
        else:
            piece = t.token
            tokens.append(piece)
            lps.append(t.logprob)
            tops.append({s: lp for _, s, lp in t.top[:k]})
        offsets.append(offset)
        offset += len(piece)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _join_logprobs(prompt: dict, generated: dict) -> dict:
    return {key: prompt[key] + generated[key] for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}


def _completion_logprobs(items: list[TokenLogprob] | None, k: int, offset: int) -> dict | None:
    if items is None:
        return None
    tokens, lps, tops, offsets = [], [], [], []
    for t in items:
        tokens.append(t.token)
        lps.append(t.logprob)
        tops.append({s: lp for _, s, lp in t.top[:k]})
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


# ------------------------------------------------------------------------------------------ chat


@dataclass
class _ChoiceState:
    parser: ToolCallParser | None
    content: str = ""
    calls: int = 0
    dropped: bool = False  # a later call was cut because parallel_tool_calls is false
    done: bool = False


def _finish_reason(c: CompletionOutput, calls: int) -> str:
    if calls and c.finish_reason in ("stop", None):
        return "tool_calls"
    return c.finish_reason or "stop"


class ChatHandler:
    """POST /v1/chat/completions."""

    def __init__(self, state: ServerState):
        self.state = state

    def prepare(self, req: ChatCompletionRequest) -> tuple[ChatPrompt, GenerationConfig]:
        s = self.state
        check_model(s, req.model)
        s.check_chars(sum(len(m.text()) for m in req.messages), "messages")
        prompt = s.prompter.build(req)
        limit, param = req.token_limit()
        max_new = token_budget(s, len(prompt.ids), limit, param, "messages")
        keep_special = prompt.tools_active and s.prompter.tools_keep_special
        # constrained decoding: response_format / guided_* as sent, or the tools' call grammar
        sent = req.guided()
        guided = dict(sent[0][1]) if sent else {}
        tools = s.prompter.tool_constraint(req, prompt)
        if tools is not None and prompt.prefill and sent:
            raise APIError(400, f"{sent[0][0]} cannot be combined with a required or named tool_choice",
                           param=sent[0][0])
        if tools is not None and not sent:
            guided = {"structural_tag": tools}
        gen = generation_config(req, max_new=max_new, stop=req.stop_list() + s.prompter.stops, logprobs=req.logprobs,
                                top_logprobs=req.top_logprobs or 0, skip_special=not keep_special, guided=guided)
        return prompt, gen

    def _parser(self, prompt: ChatPrompt) -> ToolCallParser | None:
        if not prompt.tools_active:
            return None
        return ToolCallParser(self.state.prompter.fmt)

    def _apply(self, st: _ChoiceState, req, text: str, final: bool) -> tuple[str, list[dict]]:
        """New content and tool-call deltas for a piece of generated text."""
        if st.parser is None:
            st.content += text
            return text, []
        events = st.parser.feed(text) + (st.parser.finish() if final else [])
        content, deltas = "", []
        for e in events:
            if e.kind == "content":
                content += e.text
            elif req.parallel_tool_calls is False and e.index > 0:
                st.dropped = True
            elif e.kind == "name":
                st.calls = max(st.calls, e.index + 1)
                deltas.append({"index": e.index, "id": e.id, "type": "function",
                               "function": {"name": e.text, "arguments": ""}})
            else:
                deltas.append({"index": e.index, "function": {"arguments": e.text}})
        st.content += content
        return content, deltas

    async def respond(self, request, req: ChatCompletionRequest):
        prompt, gen = await self.state.off_loop(self.prepare, req)
        rid = _rid("chatcmpl")
        stream = await start(self.state, prompt.ids, gen, rid)
        if req.stream:
            return self._stream(req, prompt, [stream], rid)
        try:
            (out,) = await collect(request, [stream])
        except ClientGone:
            return None
        return self._response(req, prompt, out, rid)

    def _response(self, req, prompt: ChatPrompt, out: RequestOutput, rid: str) -> dict:
        check_not_cut([out])
        choices = []
        for c in out.outputs:
            st = _ChoiceState(self._parser(prompt))
            content, _ = self._apply(st, req, prompt.prefill + c.text, final=True)
            calls = st.parser.calls if st.parser else []
            if req.parallel_tool_calls is False:
                calls = calls[:1]
            message: dict = {"role": "assistant", "content": st.content if (st.content or not calls) else None,
                             "refusal": None}
            if calls:
                message["tool_calls"] = [{"id": k.id, "type": "function",
                                          "function": {"name": k.name, "arguments": k.arguments}} for k in calls]
            choices.append({"index": c.index, "message": message,
                            "logprobs": _chat_logprobs(c.logprobs, req.top_logprobs or 0) if req.logprobs else None,
                            "finish_reason": _finish_reason(c, len(calls))})
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": self.state.model_name,
                "choices": choices, "usage": _usage([out]), "system_fingerprint": None}

    async def _stream(self, req, prompt: ChatPrompt, streams, rid: str):
        s = self.state
        created = int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        usage_field = {"usage": None} if include_usage else {}
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": s.model_name,
                "system_fingerprint": None}
        states: dict[int, _ChoiceState] = {}
        last: RequestOutput | None = None
        try:
            async for _, out in merged(streams):
                last = out
                for c in out.outputs:
                    if c.index not in states:
                        states[c.index] = st = _ChoiceState(self._parser(prompt))
                        yield _sse({**base, "choices": [{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                                         "logprobs": None, "finish_reason": None}], **usage_field})
                        if prompt.prefill:
                            _, deltas = self._apply(st, req, prompt.prefill, final=False)
                            if deltas:
                                yield _sse({**base, "choices": [{"index": c.index, "delta": {"tool_calls": deltas},
                                                                 "logprobs": None, "finish_reason": None}],
                                            **usage_field})
                    st = states[c.index]
                    if st.done:
                        continue
                    st.done = c.finished
                    if c.finish_reason == "abort":  # cut by shutdown
                        yield _sse(cut_error())
                        continue
                    content, deltas = self._apply(st, req, c.delta_text, final=c.finished)
                    logprobs = _chat_logprobs(c.delta_logprobs, req.top_logprobs or 0) if req.logprobs else None
                    delta: dict = {}
                    if content:
                        delta["content"] = content
                    if deltas:
                        delta["tool_calls"] = deltas
                    if delta or (logprobs and logprobs["content"]):
                        yield _sse({**base, "choices": [{"index": c.index, "delta": delta, "logprobs": logprobs,
                                                         "finish_reason": None}], **usage_field})
                    if c.finished:
                        yield _sse({**base, "choices": [{"index": c.index, "delta": {}, "logprobs": None,
                                                         "finish_reason": _finish_reason(c, st.calls)}], **usage_field})
            if include_usage and last is not None:
                yield _sse({**base, "choices": [], "usage": _usage([last])})
        except Exception as e:  # noqa: BLE001 - the stream ends with an error event and [DONE]
            log.error("stream %s ended by an error: %r", rid, e)
            yield _sse(engine_error(e).body())
        yield DONE


# ------------------------------------------------------------------------------------------ completions


class CompletionHandler:
    """POST /v1/completions (a prompt, a batch of prompts, or token ids)."""

    def __init__(self, state: ServerState):
        self.state = state

    def prepare(self, req: CompletionRequest) -> list[tuple[list[int], str, GenerationConfig]]:
        s = self.state
        check_model(s, req.model)
        prompts = req.prompts()
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        vocab = s.tokenizer.vocab_size
        out = []
        s.check_chars(sum(len(p) for p in prompts if isinstance(p, str)), "prompt")
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                if not p:
                    raise APIError(400, "prompt must not be an empty string", param="prompt")
                ids = s.tokenizer.encode(p)
                text = p
            else:
                if not p:
                    raise APIError(400, f"prompt[{i}] is an empty list of token ids", param="prompt")
                bad = [t for t in p if not 0 <= t < vocab]
                if bad:
                    raise APIError(400, f"prompt token ids must be in [0, {vocab}); got {bad[:5]}", param="prompt")
                ids, text = list(p), s.tokenizer.decode(p)
            max_new = token_budget(s, len(ids), req.max_tokens, "max_tokens", "prompt")
            k = req.logprobs or 0
            # with echo, logprobs cover the prompt too (PPL-style evaluation)
            gen = generation_config(req, max_new=max_new, stop=req.stop_list(), logprobs=req.logprobs is not None,
                                    top_logprobs=k, prompt_logprobs=k if req.echo and req.logprobs is not None else None,
                                    guided={k: v for _, kw in req.guided() for k, v in kw.items()})
            out.append((ids, text, gen))
        return out

    async def respond(self, request, req: CompletionRequest):
        prepared = await self.state.off_loop(self.prepare, req)
        rid = _rid("cmpl")
        streams = []
        try:
            for i, (ids, _, gen) in enumerate(prepared):
                streams.append(await start(self.state, ids, gen, f"{rid}-{i}"))
        except BaseException:
            for stream in streams:
                stream.close()
            raise
        if req.stream:
            return self._stream(req, prepared, streams, rid)
        try:
            outs = await collect(request, streams)
        except ClientGone:
            return None
        return self._response(req, prepared, outs, rid)

    def _text(self, req, prompt_text: str, c: CompletionOutput) -> str:
        return (prompt_text if req.echo else "") + c.text

    def _response(self, req, prepared, outs: list[RequestOutput], rid: str) -> dict:
        check_not_cut(outs)
        choices = []
        for i, out in enumerate(outs):
            for c in out.outputs:
                offset = len(prepared[i][1]) if req.echo else 0
                logprobs = None
                if req.logprobs is not None:
                    logprobs = _completion_logprobs(c.logprobs or [], req.logprobs, offset)
                    if req.echo:
                        logprobs = _join_logprobs(_prompt_logprobs(out, req.logprobs, self.state.tokenizer), logprobs)
                choices.append({
                    "index": i * req.n + c.index, "text": self._text(req, prepared[i][1], c),
                    "logprobs": logprobs,
                    "finish_reason": c.finish_reason or "stop"})
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": self.state.model_name,
                "choices": choices, "usage": _usage(outs), "system_fingerprint": None}

    async def _stream(self, req, prepared, streams, rid: str):
        s = self.state
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        base = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": s.model_name,
                "system_fingerprint": None}
        usage_field = {"usage": None} if include_usage else {}
        started: set[int] = set()
        ended: set[int] = set()
        offsets: dict[int, int] = {}
        finals: dict[int, RequestOutput] = {}
        try:
            async for i, out in merged(streams):
                for c in out.outputs:
                    index = i * req.n + c.index
                    if index in ended:
                        continue
                    if c.finished:
                        ended.add(index)
                    if c.finish_reason == "abort":  # cut by shutdown
                        yield _sse(cut_error())
                        continue
                    text = c.delta_text
                    echo_first = index not in started
                    if index not in started:
                        started.add(index)
                        offsets[index] = len(prepared[i][1]) if req.echo else 0
                        if req.echo:
                            text = prepared[i][1] + text
                    logprobs = None
                    if req.logprobs is not None:
                        logprobs = _completion_logprobs(c.delta_logprobs or [], req.logprobs, offsets[index])
                        offsets[index] += sum(len(t.token) for t in c.delta_logprobs or [])
                        if req.echo and echo_first:
                            logprobs = _join_logprobs(_prompt_logprobs(out, req.logprobs, self.state.tokenizer), logprobs)
                    if text or c.finished or (logprobs and logprobs["tokens"]):
                        yield _sse({**base, "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                                         "finish_reason": c.finish_reason if c.finished else None}],
                                    **usage_field})
                if out.finished:
                    finals[i] = out
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage([finals[i] for i in sorted(finals)])})
        except Exception as e:  # noqa: BLE001 - the stream ends with an error event and [DONE]
            log.error("stream %s ended by an error: %r", rid, e)
            yield _sse(engine_error(e).body())
        yield DONE
