"""Batched sampling with per-row settings, inside the jit'd step.

Every row carries its own temperature, top-k, top-p, min-p, penalties and PRNG key, so
one compiled step serves any mix of requests. Which stages run at all is decided by
static `SamplingFlags` (a batch of greedy requests never sorts the vocabulary).

A row's key is `fold_in(key(seed), step)` where step counts the row's generated tokens:
the same seed gives the same tokens whatever else shares the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from puyu_jax.models.logprobs import token_logprobs
from puyu_jax.serve.config import MAX_TOP_LOGPROBS, GenerationConfig

Array = jax.Array


@dataclass(frozen=True)
class SamplingFlags:
    """Static switches: which sampling stages this batch needs."""

    sample: bool = False  # some row has temperature > 0
    filter: bool = False  # some row uses top-k / top-p / min-p
    penalties: bool = False  # some row uses repetition / presence / frequency penalties
    top_logprobs: int = 0  # 0 or MAX_TOP_LOGPROBS


@flax.struct.dataclass
class SamplingArrays:
    """Per-row sampling inputs, [b] unless noted."""

    temperature: Array
    top_k: Array
    top_p: Array
    min_p: Array
    repetition_penalty: Array
    presence_penalty: Array
    frequency_penalty: Array
    key_data: Array  # [b, 2] uint32 threefry key of the row's seed
    step: Array  # tokens generated so far by the row
    history: Array  # [b, L] prompt + output token ids, -1 padded (penalties only)
    history_is_output: Array  # [b, L] bool


def seed_key_data(seed: int) -> np.ndarray:
    """Threefry key data of a 64-bit seed, as jax.random.PRNGKey(seed) builds it."""
    seed = int(seed) % 2**64
    return np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32)


def flags_for(gens: list[GenerationConfig]) -> SamplingFlags:
    return SamplingFlags(
        sample=any(not g.greedy for g in gens),
        filter=any(not g.greedy and (g.top_k or g.top_p < 1.0 or g.min_p > 0) for g in gens),
        penalties=any(g.uses_penalties for g in gens),
        top_logprobs=MAX_TOP_LOGPROBS if any(g.top_logprobs for g in gens) else 0,
    )


def apply_penalties(logits: Array, s: SamplingArrays) -> Array:
    """Repetition (prompt + output), presence and frequency (output only) penalties."""
    b, v = logits.shape
    valid = s.history >= 0
    ids = jnp.where(valid, s.history, 0)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], ids.shape)
    seen = jnp.zeros((b, v), bool).at[rows, ids].max(valid)
    counts = jnp.zeros((b, v), jnp.float32).at[rows, ids].add((valid & s.history_is_output).astype(jnp.float32))
    rep = s.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rep, logits * rep), logits)
    return logits - s.frequency_penalty[:, None] * counts - s.presence_penalty[:, None] * (counts > 0)


def _filter(logits: Array, s: SamplingArrays) -> Array:
    """Masks (to -inf) tokens outside each row's top-k, top-p nucleus and min-p floor."""
    v = logits.shape[-1]
    sorted_desc = -jnp.sort(-logits, axis=-1)
    k = jnp.where(s.top_k > 0, jnp.minimum(s.top_k, v), v)
    kth = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    cum = jnp.cumsum(probs, axis=-1)
    # the smallest prefix whose mass reaches top_p (at least one token)
    n_keep = jnp.minimum(jnp.sum(cum < s.top_p[:, None], axis=-1) + 1, v)
    pth = jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)
    pth = jnp.where(s.top_p[:, None] < 1.0, pth, -jnp.inf)
    # min-p: p >= min_p * p_max  <=>  logit >= max_logit + log(min_p)
    mth = jnp.where(s.min_p[:, None] > 0, sorted_desc[:, :1] + jnp.log(jnp.maximum(s.min_p[:, None], 1e-30)), -jnp.inf)
    floor = jnp.maximum(jnp.maximum(kth, pth), mth)
    return jnp.where(logits < floor, -jnp.inf, logits)


def apply_token_bitmask(logits: Array, bitmask: Array) -> Array:
    """Constrained decoding: tokens a row's grammar forbids get -inf (see `serve/guided.py`).

    Args:
      logits: [b, v].
      bitmask: [b, ceil(v / 32)] int32; bit j of word w allows token 32 * w + j (a free row is all ones).
    Returns:
      [b, v] logits with the forbidden tokens at -inf.
    """
    b, v = logits.shape
    bits = (bitmask[:, :, None] >> jnp.arange(32, dtype=jnp.int32)) & 1  # [b, words, 32]
    allowed = bits.reshape(b, -1)[:, :v].astype(bool)
    return jnp.where(allowed, logits, -jnp.inf)


def sample(logits: Array, s: SamplingArrays, flags: SamplingFlags, bitmask: Array | None = None) -> dict[str, Array]:
    """Chooses one token per row.

    Args:
      logits: [b, v] float32.
      s: per-row settings.
      flags: static stage switches.
      bitmask: optional [b, ceil(v / 32)] int32 allowed tokens per row (constrained decoding),
        applied before every sampling mode, greedy included; None compiles no masking.
    Returns:
      tokens [b] int32; logprob [b] (of the chosen token under the raw model
      distribution); top_ids / top_logprobs [b, K] when flags.top_logprobs.
    """
    logits = raw = logits.astype(jnp.float32)
    if flags.penalties:
        logits = apply_penalties(logits, s)
    if bitmask is not None:
        logits = apply_token_bitmask(logits, bitmask)
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    if flags.sample:
        scaled = logits / jnp.maximum(s.temperature, 1e-6)[:, None]
        if flags.filter:
            scaled = _filter(scaled, s)

        def draw(key_data, step, row):
            key = jax.random.fold_in(jax.random.wrap_key_data(key_data), step)
            return jax.random.categorical(key, row)

        sampled = jax.vmap(draw)(s.key_data, s.step, scaled).astype(jnp.int32)
        tokens = jnp.where(s.temperature > 0, sampled, tokens)
    logprob, logz = token_logprobs(raw, tokens)
    out = {"tokens": tokens, "logprob": logprob}
    if flags.top_logprobs:
        top_logits, top_ids = jax.lax.top_k(raw, flags.top_logprobs)
        out["top_ids"], out["top_logprobs"] = top_ids.astype(jnp.int32), top_logits - logz[:, None]
    return out
