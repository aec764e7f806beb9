"""Typed configs of the serving engine: per request (`GenerationConfig`) and per engine (`EngineConfig`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

KV_DTYPES = ("auto", "int8", "int4")  # EngineConfig.kv_dtype; the formats are puyu_jax.quant.kv

MAX_TOP_LOGPROBS = 20
INT32_MAX = 2**31 - 1  # token ids, lengths and top-k travel in int32 arrays
# constrained decoding (puyu_jax.serve.guided): at most one of these per request
GUIDED_FIELDS = ("json_schema", "json_object", "regex", "choice", "grammar", "structural_tag")


@dataclass(frozen=True)
class GenerationConfig:
    """How one request is decoded (greedy when temperature is 0).

    Penalties follow their usual definitions: `repetition_penalty` (CTRL / transformers:
    divide positive logits, multiply negative ones, of every token seen in prompt or output),
    `presence_penalty` and `frequency_penalty` (OpenAI: subtract once per distinct output
    token, and per occurrence). `min_p` drops tokens whose probability is below
    min_p times the top token's. A `seed` makes a sampled request reproducible whatever
    else is in the batch; with `n > 1` the i-th choice uses seed + i.

    Constrained (guided) decoding, at most one of: `json_schema` (a JSON schema, as a dict or
    JSON text), `json_object` (any JSON object), `regex`, `choice` (exactly one of the strings),
    `grammar` (EBNF in xgrammar's GBNF dialect, `root ::= ...`), `structural_tag` (xgrammar's
    structural-tag JSON, e.g. free text with schema-checked tool calls). Only tokens the grammar
    allows are sampled; the reply ends when the grammar is complete (see `serve/guided.py`).
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    min_p: float = 0.0  # 0.0 disables
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    n: int = 1
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    prompt_logprobs: int | None = None  # None: off; k: each prompt token's logprob and the top k
    json_schema: Any = None  # dict or JSON text; kept as canonical JSON text
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None
    structural_tag: Any = None  # dict or JSON text; kept as canonical JSON text

    def __post_init__(self):
        checks = [
            ("max_new_tokens", (0 if self.prompt_logprobs is not None else 1) <= self.max_new_tokens <= INT32_MAX,
             "must be in [1, 2**31) (0 only when scoring the prompt with prompt_logprobs)"),
            ("prompt_logprobs", self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS,
             f"must be None or in [0, {MAX_TOP_LOGPROBS}]"),
            ("temperature", 0.0 <= self.temperature <= 100.0, "must be in [0, 100]"),
            ("top_k", 0 <= self.top_k <= INT32_MAX, "must be in [0, 2**31)"),
            ("top_p", 0.0 < self.top_p <= 1.0, "must be in (0, 1]"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "must be in [0, 1]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty <= 10.0, "must be in (0, 10]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "must be in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "must be in [-2, 2]"),
            ("top_logprobs", 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, f"must be in [0, {MAX_TOP_LOGPROBS}]"),
            ("n", 1 <= self.n <= 16, "must be in [1, 16]"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "must be non-empty strings"),
            ("stop_token_ids", all(0 <= t <= INT32_MAX for t in self.stop_token_ids), "must be in [0, 2**31)"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} {why}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ValueError(f"seed={self.seed} must be in [0, 2**63)")
        self._check_guided()

    def _check_guided(self) -> None:
        given = [f for f in GUIDED_FIELDS if getattr(self, f) not in (None, False)]
        if len(given) > 1:
            raise ValueError(f"{given[1]}: only one constraint per request, got {' and '.join(given)}")
        for name in ("json_schema", "structural_tag"):  # canonical text: hashable, and one cache key per spec
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name} is not valid JSON: {e.msg} at char {e.pos}") from None
            if not isinstance(value, (dict, bool)):
                raise ValueError(f"{name} must be a JSON object, got {type(value).__name__}")
            object.__setattr__(self, name, json.dumps(value, ensure_ascii=False))  # keeps property order
        if self.choice is not None:
            choice = (self.choice,) if isinstance(self.choice, str) else tuple(self.choice)
            if not choice or not all(isinstance(c, str) and c for c in choice):
                raise ValueError(f"choice={self.choice!r} must be a non-empty list of non-empty strings")
            object.__setattr__(self, "choice", choice)
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name}={value!r} must be a non-empty string")

    @property
    def guide(self) -> tuple[str, Any] | None:
        """(field, value) of this request's constraint, or None when decoding is free."""
        for f in GUIDED_FIELDS:
            value = getattr(self, f)
            if value not in (None, False):
                return f, value
        return None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class EngineConfig:
    """Engine-wide limits and choices.

    block_size: tokens per KV block. num_blocks: KV blocks in the pool (0: derive from
    kv_cache_memory_gb). max_num_seqs: running sequences per decode step.
    max_num_batched_tokens: prompt tokens prefilled per step (longer prompts are chunked).
    max_model_len: context limit (0: the model's max_position_embeddings).
    max_waiting: queued requests before `QueueFullError`.
    kv_dtype: "auto" (the model dtype), "int8" (symmetric, per-token, per-head scales) or "int4"
    (asymmetric: per-token, per-head scale and zero point; `puyu_jax.quant.kv`).
    quant: "none", "int4" (weights quantized on load with `quant_method` unless
    the checkpoint is already quantized), "w8a8" (SmoothQuant on load: per-channel int8 weights,
    per-token int8 activations, int8 x int8 -> int32 matmuls, calibrated on 4 windows of the
    shipped C4 slice; the fastest form at 32 rows on a CPU, docs/benchmarks.md) or "native" (a GGUF's Q4_0 / Q4_1 / Q8_0 tensors
    kept as they are, see `puyu_jax.quant.gguf`). tp: tensor-parallel degree (devices on a
    `tensor` mesh axis). attention_impl: "auto" (Pallas on GPU/TPU, plain JAX on CPU),
    "pallas" or "reference". decode_steps: decode steps run on the device per dispatch
    while no prompt is waiting to start (tokens come back in chunks of up to this many;
    1 decodes one token per round).
    """

    block_size: int = 16
    num_blocks: int = 0
    kv_cache_memory_gb: float = 0.5
    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    max_model_len: int = 0
    max_waiting: int = 1024
    enable_prefix_caching: bool = True
    kv_dtype: str = "auto"
    quant: str = "none"
    quant_method: str = "rtn"
    tp: int = 1
    attention_impl: str = "auto"
    dtype: str = "float32"
    decode_steps: int = 8

    def __post_init__(self):
        checks = [
            ("block_size", self.block_size in (8, 16, 32, 64, 128), "must be one of 8, 16, 32, 64, 128"),
            ("num_blocks", self.num_blocks >= 0, "must be >= 0"),
            ("max_num_seqs", self.max_num_seqs >= 1, "must be >= 1"),
            ("max_num_batched_tokens", self.max_num_batched_tokens >= self.block_size, "must be >= block_size"),
            ("max_waiting", self.max_waiting >= 1, "must be >= 1"),
            ("kv_dtype", self.kv_dtype in KV_DTYPES, "must be 'auto', 'int8' or 'int4'"),
            ("quant", self.quant in ("none", "int4", "w8a8", "native"), "must be 'none', 'int4', 'w8a8' or 'native'"),
            ("quant_method", self.quant_method in ("rtn", "awq"), "must be 'rtn' or 'awq'"),
            ("tp", self.tp >= 1, "must be >= 1"),
            ("decode_steps", 1 <= self.decode_steps <= 64, "must be in [1, 64]"),
            ("attention_impl", self.attention_impl in ("auto", "pallas", "reference"), "must be auto|pallas|reference"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"engine.{name}={getattr(self, name)!r} {why}")
