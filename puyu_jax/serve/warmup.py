"""Warm-up: compile the step programs a server will meet before its traffic needs them.

The runner compiles one program per (batch bucket x token / block buckets x sampling
flags) the first time it meets it; on this kind of machine that is 10-45 s during which
every running request stalls. The sampling flags of a batch are the union of its rows'
features, so a server meets every union of what the API can ask for:

    greedy or sampled  x  top-k/p/min-p (sampled only)  x  penalties  x  top log-probs   (12 sets)

`warmup_plan` lists one step per (batch bucket up to max_num_seqs x feature set), plus
the prefill token buckets of a single request; `run_warmup` drives them through the
engine's public API (`AsyncEngine.submit_batch`, throwaway random prompts), one step
whenever the engine is idle, so live requests are not held behind it.

Both the single-step program and the multi-step decode loop (`EngineConfig.decode_steps`)
are compiled by each step. Shapes also depend on the span of the longest sequence in the
batch (block tables and penalty histories, powers of two from 4 blocks): the plan covers the
first span (64 tokens at block size 16); a batch whose longest sequence crosses into a longer
span compiles that span's programs on first use.

On a CPU a full plan for SmolLM2 (max_num_seqs 32) is ~80 steps of two programs each,
tens of minutes at 10-45 s per program; on an accelerator a few minutes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from puyu_jax.serve.config import EngineConfig, GenerationConfig

log = logging.getLogger(__name__)

PROMPT_LEN = 12  # tokens of a throwaway prompt: one 16-token prefill bucket, decode within 4 blocks


@dataclass(frozen=True)
class WarmupStep:
    """`batch` throwaway requests of `prompt_len` tokens decoded together with `gen`."""

    batch: int
    gen: GenerationConfig
    label: str
    prompt_len: int = PROMPT_LEN


def feature_sets() -> list[tuple[str, GenerationConfig]]:
    """Every union of sampling features the API can put in one batch, the commonest first."""
    out = []
    for sampled, filtered, penalties, top in itertools.product((False, True), repeat=4):
        if filtered and not sampled:  # filters only act on sampled rows
            continue
        kw: dict = {"temperature": 1.0 if sampled else 0.0}
        if filtered:
            kw["top_p"] = 0.9
        if penalties:
            kw["repetition_penalty"] = 1.1
        if top:
            kw.update(logprobs=True, top_logprobs=1)
        name = "+".join(n for n, on in (("sampled" if sampled else "greedy", True), ("top-p", filtered),
                                        ("penalties", penalties), ("logprobs", top)) if on)
        out.append((name, GenerationConfig(max_new_tokens=3, ignore_eos=True, **kw)))
    out.sort(key=lambda item: item[0].count("+"))
    return out


def batch_buckets(max_num_seqs: int) -> list[int]:
    """The batch sizes the runner pads to: powers of two up to the one holding max_num_seqs."""
    out, b = [], 1
    while True:
        out.append(b)
        if b >= max_num_seqs:
            return out
        b *= 2


def warmup_plan(config: EngineConfig, max_model_len: int, done: tuple[int, ...] = ()) -> list[WarmupStep]:
    """Steps covering every batch bucket x feature set, and the prefill buckets of one request.

    Args:
      config: the engine's config (max_num_seqs, max_num_batched_tokens).
      max_model_len: the context limit (prompts stay below it).
      done: batch sizes already compiled greedy (by `LLMEngine.warmup`), skipped here.
    """
    steps = []
    for b in batch_buckets(config.max_num_seqs):
        for name, gen in feature_sets():
            if name == "greedy" and b in done:
                continue
            steps.append(WarmupStep(min(b, config.max_num_seqs), gen, f"batch {b} {name}"))
    t = 32
    while t <= min(config.max_num_batched_tokens, max_model_len - 4):
        for name, gen in feature_sets()[:2]:  # greedy and sampled
            steps.append(WarmupStep(1, gen, f"prefill {t} tokens {name}", prompt_len=t - 1))
        t *= 2
    return steps


async def run_warmup(async_engine, steps: list[WarmupStep], on_progress: Callable[[int, int, str], None] | None = None,
                     idle_wait_s: float | None = None, seed: int = 0) -> float:
    """Runs the steps through `async_engine`; returns the seconds it took.

    Each step waits until no request is in flight (at most idle_wait_s; None: as long as it
    takes), so warm-up only fills the gaps of live traffic: a request that arrives meanwhile
    waits for at most the one compilation under way. Prompts are random token ids (their
    blocks in the prefix cache are evicted like any other unused block).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    vocab = async_engine.engine.model_config.vocab_size
    for i, step in enumerate(steps):
        deadline = time.monotonic() + (idle_wait_s if idle_wait_s is not None else float("inf"))
        while async_engine.num_in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        prompts = [rng.integers(1, vocab, step.prompt_len).tolist() for _ in range(step.batch)]
        streams = await async_engine.submit_batch([(p, step.gen) for p in prompts])
        for stream in streams:
            async for _ in stream:
                pass
        if on_progress is not None:
            on_progress(i + 1, len(steps), step.label)
    return time.perf_counter() - t0
