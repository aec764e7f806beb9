"""LLM backends: `chat(messages, tools=None, stop=()) -> LLMReply`.

  * `LocalLLM`: a model loaded in-process, run on the serving engine (`pipeline`);
    it also takes `constraint=` (a protocol's `action_format`) and decodes under that grammar;
  * `OpenAILLM`: any OpenAI-compatible endpoint through the `openai` client (our server,
    LMDeploy, vLLM, OpenAI itself): base_url, model, api_key;
  * `ReplayLLM`: replays a fixed transcript of replies (a stand-in for a model in tests and demos).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from puyu_jax.agent.protocols import truncate_at
from puyu_jax.agent.types import LLMReply, ToolCall

__all__ = ["LocalLLM", "OpenAILLM", "ReplayLLM", "make_llm", "parse_hermes_tool_calls"]

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def parse_hermes_tool_calls(text: str) -> tuple[str, tuple[ToolCall, ...]]:
    """Splits `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Hermes / Qwen2 format)
    out of a text reply: returns the remaining text and the calls."""
    calls = []
    for i, m in enumerate(_HERMES.finditer(text)):
        cid = f"call_{i}"
        try:
            obj = json.loads(m.group(1))
            calls.append(ToolCall(obj["name"], obj.get("arguments", obj.get("parameters", {})), cid))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            calls.append(ToolCall("?", m.group(1), cid, f"unreadable <tool_call> block ({type(e).__name__})"))
    return _HERMES.sub("", text).strip(), tuple(calls)


def _arguments(raw: str):
    """A call's arguments as JSON when they parse, else the raw text (a cut-off call is shown as written)."""
    try:
        return json.loads(raw or "{}")
    except json.JSONDecodeError:
        return raw


def _flatten_for_template(messages: list[dict], template_source: str) -> list[dict]:
    """Messages a plain chat template can render: no None content; tool calls written as Hermes
    `<tool_call>` text when the template does not render `tool_calls` itself."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls") and "tool_calls" not in template_source:
            blocks = [json.dumps({"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])})
                      for c in m.pop("tool_calls")]
            m["content"] = ((m.get("content") or "") + "".join(f"\n<tool_call>\n{b}\n</tool_call>" for b in blocks)).strip()
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


class LocalLLM:
    """A model run in this process on the serving engine. Greedy by default; generation stops
    at the first stop string (the caller's, then the chat template's turn end).
    `chat(..., constraint=...)` decodes under a structural tag (`Protocol.action_format`).

    Args:
      source: anything `load_pretrained` accepts (`smollm2`, a checkpoint dir, a .gguf, an HF dir).
      template: a name in `chat_templates.TEMPLATES` or jinja source; None uses the tokenizer's own.
      sampling: a `GenerationConfig` (max_new_tokens bounds each reply).
      dtype: compute dtype.
      engine_config: the engine's `EngineConfig` (pool size, quantization, ...).
    """

    def __init__(self, source: str = "smollm2", *, template: str | None = None, sampling=None, dtype: str = "float32",
                 pretrained=None, engine_config=None):
        from puyu_jax.pretrained import load_pretrained
        from puyu_jax.serve.config import EngineConfig, GenerationConfig
        from puyu_jax.serve.pipeline import pipeline

        self.pre = pretrained if pretrained is not None else load_pretrained(source, dtype=dtype)
        if self.pre.tokenizer is None:
            raise ValueError(f"model {source!r} has no tokenizer; an agent backend needs one")
        self.tokenizer = self.pre.tokenizer
        self.template = template
        self.sampling = sampling if sampling is not None else GenerationConfig(max_new_tokens=256)
        cfg = engine_config or EngineConfig(dtype=dtype, max_num_seqs=4, kv_cache_memory_gb=0.25)
        self.pipe = pipeline(self.pre.model, self.tokenizer, engine_config=cfg)

    accepts_constraints = True  # chat() takes constraint= (agent.core asks for constrained actions)

    def _template_stops(self) -> list[str]:
        from puyu_jax.chat_templates import stop_strings

        source = self.template if self.template is not None else (self.tokenizer.chat_template or "")
        try:
            stops = stop_strings(source)
        except ValueError:
            stops = []
        eos = self.tokenizer.eos_token
        return stops + ([eos] if eos else [])

    def chat(self, messages: list[dict], tools: list[dict] | None = None, stop: Sequence[str] = (),
             constraint: str | None = None) -> LLMReply:
        """Generates the assistant's reply to `messages` (cut at the first stop string); under
        `constraint` (a structural tag, JSON text) only replies the grammar allows."""
        from dataclasses import replace

        from puyu_jax.chat_templates import apply_chat_template

        tok = self.tokenizer
        source = self.template if self.template is not None else (tok.chat_template or "")
        ids = apply_chat_template(tok, _flatten_for_template(messages, source), template=self.template,
                                  tools=tools, tokenize=True)
        stops = tuple(dict.fromkeys(s for s in list(stop) + self._template_stops() if s))
        if constraint is not None:
            # the grammar ends the reply; stop strings would cut a call's closing markup
            gen = replace(self.sampling, structural_tag=constraint, skip_special_tokens=False)
            # the turn's end token (kept with the special tokens) is no part of the reply
            return self._reply(truncate_at(self.pipe(ids, gen).text, self._template_stops()), tools)
        # special tokens are kept: protocol markup such as <|action_start|> may be one
        gen = replace(self.sampling, stop=tuple(self.sampling.stop) + stops, skip_special_tokens=False)
        return self._reply(truncate_at(self.pipe(ids, gen).text, list(stops)), tools)

    @staticmethod
    def _reply(text: str, tools) -> LLMReply:
        if tools:
            text, calls = parse_hermes_tool_calls(text)
            return LLMReply(text, calls)
        return LLMReply(text)


@dataclass
class OpenAILLM:
    """An OpenAI-compatible chat-completions endpoint.

    Args:
      base_url: e.g. `http://127.0.0.1:23333/v1` (a URL without `/v1` gets it appended).
      model: the served model name; empty picks the first of `GET /models`.
      api_key: sent as the bearer token (`EMPTY` when the server needs none).
      temperature, max_tokens: sampling of every request.
    """

    base_url: str
    model: str = ""
    api_key: str = "EMPTY"
    temperature: float = 0.0
    max_tokens: int = 512
    timeout: float = 120.0
    client: object = field(init=False, repr=False)

    def __post_init__(self):
        import openai

        url = self.base_url.rstrip("/")
        if not url.endswith("/v1"):
            url += "/v1"
        self.base_url = url
        self.client = openai.OpenAI(base_url=url, api_key=self.api_key or "EMPTY", timeout=self.timeout)
        if not self.model:
            models = list(self.client.models.list())
            if not models:
                raise ValueError(f"{url} serves no model")
            self.model = models[0].id

    def chat(self, messages: list[dict], tools: list[dict] | None = None, stop: Sequence[str] = ()) -> LLMReply:
        kwargs: dict = {"model": self.model, "messages": messages, "temperature": self.temperature,
                        "max_tokens": self.max_tokens}
        if tools:
            kwargs["tools"] = tools
        if stop:
            kwargs["stop"] = list(stop)[:4]  # the API takes at most four
        resp = self.client.chat.completions.create(**kwargs)
        msg = resp.choices[0].message
        calls = tuple(ToolCall(c.function.name, c.function.arguments, c.id or f"call_{uuid.uuid4().hex[:8]}")
                      for c in (msg.tool_calls or []))
        text = truncate_at(msg.content or "", list(stop))
        return LLMReply(text, calls)


@dataclass
class ReplayLLM:
    """Returns the given replies in order; records every request in `requests`.

    Args:
      replies: each a text or an `LLMReply` (with tool calls).
    """

    replies: Sequence[str | LLMReply]
    requests: list[dict] = field(default_factory=list)

    def chat(self, messages: list[dict], tools: list[dict] | None = None, stop: Sequence[str] = ()) -> LLMReply:
        i = len(self.requests)
        self.requests.append({"messages": messages, "tools": tools, "stop": list(stop)})
        if i >= len(self.replies):
            raise RuntimeError(f"the replay transcript has only {len(self.replies)} replies")
        r = self.replies[i]
        return r if isinstance(r, LLMReply) else LLMReply(r)


def make_llm(llm: str, *, model: str = "", api_key: str = "", template: str | None = None, sampling=None,
             dtype: str = "float32"):
    """A backend from a string: an `http(s)://` URL -> OpenAILLM, anything else -> LocalLLM(source)."""
    if llm.startswith(("http://", "https://")):
        kwargs = {}
        if sampling is not None:
            kwargs = {"temperature": sampling.temperature, "max_tokens": sampling.max_new_tokens}
        return OpenAILLM(llm, model=model, api_key=api_key, **kwargs)
    return LocalLLM(llm, template=template, sampling=sampling, dtype=dtype)
