"""Grammar-constrained (guided) decoding: JSON schemas, regexes, choices, EBNF and tool calls.

A constrained request carries one spec on its `GenerationConfig` (`json_schema`,
`json_object`, `regex`, `choice`, `grammar` or `structural_tag`). The engine keeps one
`Guide` (a grammar matcher) per sequence; before each sampled token it fills that row of a
[rows, ceil(vocab / 32)] int32 allowed-token bitmask (free rows stay all ones), the jit'd
step masks the logits with it (`sampling.apply_token_bitmask`) whatever the sampling mode,
and the sampled token is fed back to the matcher. The sequence ends when the grammar is
complete: its matcher then allows only end-of-sequence tokens.

    spec ─► Guides.compile (once per tokenizer and spec, cached) ─► Guide per sequence
         ─► fill(bitmask, row) ─► logits masked in the step ─► accept(token) ─► ...

Why xgrammar: it is the grammar engine LMDeploy, vLLM (default backend) and SGLang use, so
puyu's behaviour matches theirs; it compiles JSON schema, regex, EBNF and structural tags
(free text with schema-checked tool calls, which `tool_choice="auto"` needs) into a pushdown
automaton whose per-token masks are mostly precomputed, so filling a row costs microseconds
on the host; its matchers `fork` (n > 1) and `rollback` (discarded speculative tokens).
llguidance is as fast but its grammar format is its own; outlines-core handles regular
languages only (JSON schemas are flattened into regexes, recursion is lost).

Choices of ours: JSON is compact (`any_whitespace=False`: `{"a": 1, "b": [2, 3]}`), since
a small model given free whitespace can spend its whole budget on newlines; `json_object`
means any JSON object. A preempted sequence keeps its output tokens (it is recomputed from
them), so its matcher stays valid; an engine that drafts several tokens ahead rolls the
matcher back by the tokens it drops (`Guide.rollback`).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from puyu_jax.serve.config import GenerationConfig

__all__ = ["Guide", "Guides", "bitmask_width", "allocate_bitmask", "allowed_ids", "tool_call_tag",
           "choice_tag", "json_schema_tag"]


def bitmask_width(vocab_size: int) -> int:
    """int32 words per row of an allowed-token bitmask."""
    return -(-vocab_size // 32)


def allocate_bitmask(rows: int, vocab_size: int) -> np.ndarray:
    """[rows, ceil(vocab/32)] int32, all ones (every token allowed): bit j of word w is token 32w + j."""
    return np.full((rows, bitmask_width(vocab_size)), -1, np.int32)


def allowed_ids(row: np.ndarray, vocab_size: int) -> np.ndarray:
    """The token ids one bitmask row allows (for tests and debugging)."""
    bits = np.unpackbits(np.ascontiguousarray(row, np.int32).view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:vocab_size])


class Guide:
    """The grammar state of one sequence (an xgrammar `GrammarMatcher`)."""

    def __init__(self, matcher, kind: str):
        self.matcher = matcher
        self.kind = kind

    def fill(self, bitmask: np.ndarray, row: int) -> None:
        """Writes the tokens allowed next into bitmask[row]."""
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def accept(self, token: int) -> bool:
        """Advances past a sampled token; False when the grammar does not allow it."""
        return bool(self.matcher.accept_token(int(token)))

    @property
    def terminated(self) -> bool:
        """The grammar is complete and an end token was accepted: nothing may follow."""
        return bool(self.matcher.is_terminated())

    def rollback(self, n: int) -> None:
        """Forgets the last n accepted tokens."""
        if n:
            self.matcher.rollback(int(n))

    def fork(self) -> "Guide":
        """An independent copy in the same state (another choice of an n > 1 request)."""
        return Guide(self.matcher.fork(), self.kind)


class Guides:
    """Compiles constraint specs for one tokenizer (each spec once, LRU-cached) and makes matchers.

    Args:
      tokenizer: puyu's `Tokenizer`.
      vocab_size: the model's vocabulary (may exceed the tokenizer's: extra ids are never allowed).
      stop_ids: ids that end a sequence; a complete grammar allows only these.
      cache_size: compiled grammars kept.
    """

    _by_tokenizer: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, tokenizer, vocab_size: int, stop_ids: Iterable[int], cache_size: int = 256):
        import xgrammar as xgr  # imported on first use: it pulls in torch, which free decoding never needs

        self._xgr = xgr
        spellings, encoding, prefix_space = tokenizer.vocab_encoding()
        vocab_type = {"byte_level": xgr.VocabType.BYTE_LEVEL, "byte_fallback": xgr.VocabType.BYTE_FALLBACK,
                      "raw": xgr.VocabType.RAW}[encoding]
        self.vocab_size = max(int(vocab_size), len(spellings))
        self.stop_ids = sorted({int(i) for i in stop_ids})
        self.info = xgr.TokenizerInfo(spellings, vocab_type, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids,
                                      add_prefix_space=prefix_space)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2, cache_enabled=False)
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._cache_size = cache_size
        self.compiled = 0  # grammars compiled (cache misses)

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int, stop_ids: Iterable[int]) -> "Guides":
        """The shared `Guides` of a tokenizer (engines over one tokenizer share compiled grammars)."""
        key = (int(vocab_size), tuple(sorted({int(i) for i in stop_ids})))
        with cls._lock:
            per = cls._by_tokenizer.setdefault(tokenizer, {})
            if key not in per:
                per[key] = cls(tokenizer, vocab_size, key[1])
            return per[key]

    def compile(self, kind: str, spec: Any):
        """The compiled grammar of one spec (see `GenerationConfig.guide`); raises ValueError naming `kind`."""
        key = (kind, spec)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            compiled = self._compile(kind, spec)
        except (RuntimeError, ValueError, TypeError) as e:  # xgrammar's parse / conversion errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first = re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", first)  # xgrammar's "[time] file.cc:line: "
            raise ValueError(f"{kind}: cannot compile the constraint: {first}") from None
        with self._lock:
            self.compiled += 1
            self._cache[key] = compiled
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, kind: str, spec: Any):
        c = self.compiler
        if kind == "json_schema":
            return c.compile_json_schema(json.dumps(_bounded_strings(json.loads(spec))), any_whitespace=False)
        if kind == "json_object":
            return c.compile_json_schema('{"type": "object"}', any_whitespace=False)
        if kind == "regex":
            return c.compile_regex(spec)
        if kind == "choice":
            return c.compile_structural_tag(choice_tag(spec))
        if kind == "grammar":
            return c.compile_grammar(spec)
        if kind == "structural_tag":
            return c.compile_structural_tag(spec)
        raise ValueError(f"unknown constraint kind {kind!r}")

    def guide(self, gen: GenerationConfig) -> Guide | None:
        """A fresh matcher for a request's constraint (None when it has none)."""
        spec = gen.guide
        if spec is None:
            return None
        compiled = self.compile(*spec)
        stops = sorted(set(self.stop_ids) | {int(i) for i in gen.stop_token_ids})
        return Guide(self._xgr.GrammarMatcher(compiled, override_stop_tokens=stops), spec[0])


# ------------------------------------------------------------------------------ structural tags


def _tag(fmt: dict) -> str:
    return json.dumps({"type": "structural_tag", "format": fmt}, ensure_ascii=False)


def choice_tag(choices: Sequence[str]) -> str:
    """Exactly one of the strings."""
    return _tag({"type": "or", "elements": [{"type": "const_string", "value": c} for c in choices]})


def json_schema_tag(schema: dict) -> dict:
    """A structural-tag element: JSON valid under `schema` (at most one whitespace character in a row)."""
    return {"type": "json_schema", "json_schema": _bounded_strings(schema), "max_whitespace_cnt": 1}


_STRING_CHAR = '[^\\x00-\\x1f"\\\\]'  # what a JSON string may hold unescaped (RFC 8259)


def _bounded_strings(schema: Any) -> Any:
    """The schema with each length-bounded string (minLength / maxLength, no pattern or format)
    written as a pattern: xgrammar 0.2.8's rule for such strings lets raw control characters
    through, which JSON forbids; its `pattern` rule escapes properly. Validates the same strings."""
    if isinstance(schema, list):
        return [_bounded_strings(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _bounded_strings(v) for k, v in schema.items()}
    if out.get("type") == "string" and ("minLength" in out or "maxLength" in out) and \
            not {"pattern", "format", "enum", "const"} & out.keys():
        lo, hi = int(out.pop("minLength", 0)), out.pop("maxLength", None)
        out["pattern"] = f"^{_STRING_CHAR}{{{lo},{'' if hi is None else int(hi)}}}$"
    return out


def tool_call_tag(calls: Sequence[tuple[str, dict | None, str]], *, trigger: str = "", required: bool = False,
                  prefix: str = "", text_before: bool = True) -> str:
    """A structural tag for tool calls: each call is `begin` + JSON of its schema + `end`.

    Args:
      calls: (begin, parameters schema or None for any object, end) per tool; `begin` commits
        to the tool (e.g. `<tool_call>\\n{"name": "f", "arguments": `), `end` closes the call.
      trigger: text that opens a call (a prefix of every begin), for free text with calls.
      required: a call must come (otherwise free text, calls optional: `tool_choice="auto"`).
      prefix: text already in the prompt (a prefill): it is cut from the start of every begin.
      text_before: with `required`, free text may come before the call (stops at the trigger).
    Returns:
      The structural tag as JSON text (`GenerationConfig.structural_tag`).
    """
    elements = []
    for begin, schema, end in calls:
        if prefix and not begin.startswith(prefix):
            raise ValueError(f"the prefill {prefix!r} does not begin the call {begin!r}")
        elements.append({"type": "tag", "begin": begin[len(prefix):],
                         "content": json_schema_tag(schema if schema is not None else {"type": "object"}),
                         "end": end})
    if prefix or (required and not text_before) or not trigger:
        # one call, right away (or after a prefill that opened it)
        if not required and not trigger:
            raise ValueError("optional calls need a trigger")
        return _tag(elements[0] if len(elements) == 1 else {"type": "or", "elements": elements})
    return _tag({"type": "triggered_tags", "triggers": [trigger], "tags": elements, "at_least_one": required,
                 "stop_after_first": required})
