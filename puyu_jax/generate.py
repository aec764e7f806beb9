"""Simple batched generation with the dense KV cache: jit'd prefill and decode steps.

This is the plain path used by `puyu generate`, the demo and parity tests. The
serving engine (paged KV cache, continuous batching) lives in `puyu_jax/serve/`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.models.config import ModelConfig
from puyu_jax.models.transformer import KVCache, Transformer, init_cache


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. temperature 0 means greedy."""

    temperature: float = 0.0
    top_k: int = 0  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    max_new_tokens: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1")


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_k: int, top_p: float) -> jax.Array:
    """Samples token ids [b] from logits [b, v]. The three knobs are static (Python) values."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        cutoff_idx = jnp.sum(cum < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("cache",))
def _prefill(graphdef, state, tokens, cache: KVCache, key, sampling: tuple):
    model = nnx.merge(graphdef, state)
    logits, cache = model(tokens, cache=cache, last_only=True)
    return sample_logits(logits[:, -1], key, *sampling), logits[:, -1], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling"), donate_argnames=("cache",))
def _decode(graphdef, state, token, cache: KVCache, key, sampling: tuple):
    model = nnx.merge(graphdef, state)
    logits, cache = model(token[:, None], cache=cache)
    return sample_logits(logits[:, -1], key, *sampling), cache


@dataclass
class GenerationStats:
    """Cumulative timings. The first decode step of each call (which compiles on a new
    shape) is kept apart in `first_step_s`, so `decode_tok_s` is the steady-state rate."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    first_step_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0  # steady-state steps (after the first of each call)
    decode_tokens: int = 0  # tokens produced by those steps

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["prefill_tok_s"] = self.prompt_tokens / self.prefill_s if self.prefill_s else 0.0
        d["decode_tok_s"] = self.decode_tokens / self.decode_s if self.decode_s else 0.0
        return d


@dataclass
class Generator:
    """Batched generation over a model: left-padded prefill, then one decode step per token.

    Shapes are bucketed (prompt to a multiple of `prompt_bucket`, cache to a multiple
    of `cache_bucket`) so repeated calls reuse compiled steps.
    """

    model: Transformer
    prompt_bucket: int = 16
    cache_bucket: int = 128
    stats: GenerationStats = field(default_factory=GenerationStats)

    def __post_init__(self):
        self.cfg: ModelConfig = self.model.cfg
        self.graphdef, self.state = nnx.split(self.model)

    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig = SamplingConfig(),
        stop_ids: Sequence[int] = (),
    ) -> Iterator[np.ndarray]:
        """Yields, per step, the new token of every row ([b] int array; -1 for finished rows)."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        b = len(prompts)
        longest = max(len(p) for p in prompts)
        t = _round_up(longest, self.prompt_bucket)
        total = t + sampling.max_new_tokens
        if longest + sampling.max_new_tokens > self.cfg.max_position_embeddings and self.cfg.rope.scaling == "none":
            raise ValueError(
                f"prompt ({longest}) + max_new_tokens ({sampling.max_new_tokens}) exceeds the model's "
                f"context of {self.cfg.max_position_embeddings}"
            )
        tokens = np.zeros((b, t), np.int32)
        starts = np.zeros((b,), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, t - len(p):] = p
            starts[i] = t - len(p)
        cache = init_cache(self.cfg, b, _round_up(total, self.cache_bucket), starts=starts)
        knobs = (float(sampling.temperature), int(sampling.top_k), float(sampling.top_p))
        key = jax.random.key(sampling.seed)
        stop = np.asarray(list(stop_ids), np.int32)
        done = np.zeros((b,), bool)

        t0 = time.perf_counter()
        token, _, cache = _prefill(self.graphdef, self.state, jnp.asarray(tokens), cache, jax.random.fold_in(key, 0), knobs)
        host = np.asarray(token)
        self.stats.prefill_s += time.perf_counter() - t0
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        for step in range(sampling.max_new_tokens):
            out = np.where(done, -1, host)
            produced = int((~done).sum())
            self.stats.new_tokens += produced
            if step >= 2:
                self.stats.decode_tokens += produced
            done |= np.isin(host, stop)
            yield out
            if done.all() or step == sampling.max_new_tokens - 1:
                break
            t0 = time.perf_counter()
            token, cache = _decode(self.graphdef, self.state, token, cache, jax.random.fold_in(key, step + 1), knobs)
            host = np.asarray(token)
            if step == 0:
                self.stats.first_step_s += time.perf_counter() - t0
            else:
                self.stats.decode_s += time.perf_counter() - t0
                self.stats.decode_steps += 1

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingConfig = SamplingConfig(),
        stop_ids: Sequence[int] = (),
        on_step: Callable[[np.ndarray], None] | None = None,
    ) -> list[list[int]]:
        """Generates for every prompt; returns the new token ids per row (stop token included)."""
        outs: list[list[int]] = [[] for _ in prompts]
        for step_tokens in self.stream(prompts, sampling, stop_ids):
            if on_step is not None:
                on_step(step_tokens)
            for row, tok in enumerate(step_tokens):
                if tok >= 0:
                    outs[row].append(int(tok))
        return outs


# ----------------------------------------------------------------------------- a generation run


@dataclass(frozen=True)
class GenerateConfig:
    """One `puyu generate` run (also a sweep run kind: `run: generate`)."""

    model: str = "smollm2"  # see puyu_jax.pretrained for the accepted sources
    prompts: tuple[str, ...] = ("What is the capital of France?",)
    chat: bool = True  # wrap each prompt as a user turn in the model's chat template
    system: str = ""  # optional system message (chat mode)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    dtype: str = "float32"


def encode_prompt(tokenizer, text: str, *, chat: bool, system: str = "") -> list[int]:
    """Token ids for a prompt, through the chat template when `chat`."""
    if not chat:
        return tokenizer.encode(text)
    from puyu_jax.chat_templates import apply_chat_template

    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return apply_chat_template(tokenizer, messages, add_generation_prompt=True, tokenize=True)


def run_generate(cfg: GenerateConfig, out_dir=None, *, on_text: Callable[[str], None] | None = None) -> dict:
    """Loads the model, generates for every prompt and returns metrics.

    With one prompt and `on_text`, text is streamed to `on_text` as it is decoded.
    Writes `outputs.jsonl` into `out_dir` when given.
    """
    import json
    from pathlib import Path

    from puyu_jax.pretrained import load_pretrained

    t0 = time.perf_counter()
    pre = load_pretrained(cfg.model, dtype=cfg.dtype)
    if pre.tokenizer is None:
        raise ValueError(f"model {cfg.model!r} has no tokenizer; generate needs one")
    load_s = time.perf_counter() - t0
    tok = pre.tokenizer
    ids = [encode_prompt(tok, p, chat=cfg.chat, system=cfg.system) for p in cfg.prompts]
    gen = Generator(pre.model)
    streamed: list[int] = []
    printed = ""

    def on_step(step_tokens):
        nonlocal printed
        if on_text is None or len(ids) != 1 or step_tokens[0] < 0:
            return
        streamed.append(int(step_tokens[0]))
        text = tok.decode(streamed, skip_special=True)
        if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            on_text(text[len(printed):])
            printed = text

    outs = gen.generate(ids, cfg.sampling, stop_ids=tok.eos_ids, on_step=on_step)
    texts = [tok.decode(o, skip_special=True) for o in outs]
    if on_text is not None and len(ids) != 1:
        for p, t in zip(cfg.prompts, texts):
            on_text(f"### {p}\n{t}\n")
    metrics = {"load_s": round(load_s, 3), **{k: round(v, 3) if isinstance(v, float) else v for k, v in gen.stats.as_dict().items()}}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "outputs.jsonl", "w") as f:
            for p, o, t in zip(cfg.prompts, outs, texts):
                f.write(json.dumps({"prompt": p, "token_ids": o, "text": t}, ensure_ascii=False) + "\n")
    metrics["text_0"] = texts[0][:80]
    return metrics


def _register() -> None:
    from puyu_jax.sweep import register_run

    register_run("generate", GenerateConfig, lambda cfg, out_dir: run_generate(cfg, out_dir))


_register()
