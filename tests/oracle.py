"""Test oracles: the plain dense-cache paths every engine caller is checked against.

`DenseGenerator` is the simple batched generator the project used before everything ran
on the serving engine: left-padded prefill and one decode step per token over the
model's dense `KVCache`, greedy or seeded top-k/top-p sampling. `dense_loglikelihood` is
the former evaluation scorer: one plain forward per right-padded batch. Both stay here
as independent references (and for the benchmarks that compare against them); the
package itself has one inference path, `puyu_jax.serve`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.models.logprobs import token_logprobs
from puyu_jax.models.transformer import KVCache, Transformer, init_cache


def sample_logits(logits, key, temperature: float, top_k: int, top_p: float):
    """Token ids [b] from logits [b, v]; the three knobs are static (Python) values."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        cutoff_idx = jnp.sum(cum < top_p, axis=-1, keepdims=True)
        cutoff = jnp.take_along_axis(sorted_logits, cutoff_idx, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "knobs"), donate_argnames=("cache",))
def _prefill(graphdef, state, tokens, cache: KVCache, key, knobs: tuple):
    model = nnx.merge(graphdef, state)
    logits, cache = model(tokens, cache=cache, last_only=True)
    return sample_logits(logits[:, -1], key, *knobs), cache


@functools.partial(jax.jit, static_argnames=("graphdef", "knobs"), donate_argnames=("cache",))
def _decode(graphdef, state, token, cache: KVCache, key, knobs: tuple):
    model = nnx.merge(graphdef, state)
    logits, cache = model(token[:, None], cache=cache)
    return sample_logits(logits[:, -1], key, *knobs), cache


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class DenseGenerator:
    """Batched generation: left-padded prefill, then one decode step per token (dense KV cache)."""

    def __init__(self, model: Transformer, prompt_bucket: int = 16, cache_bucket: int = 128):
        self.cfg = model.cfg
        self.prompt_bucket, self.cache_bucket = prompt_bucket, cache_bucket
        self.graphdef, self.state = nnx.split(model)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop_ids: Sequence[int] = (), *,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> list[list[int]]:
        """New token ids per prompt (a stop id ends its row and is included)."""
        b = len(prompts)
        longest = max(len(p) for p in prompts)
        t = _round_up(longest, self.prompt_bucket)
        tokens = np.zeros((b, t), np.int32)
        starts = np.zeros((b,), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, t - len(p):] = p
            starts[i] = t - len(p)
        cache = init_cache(self.cfg, b, _round_up(t + max_new_tokens, self.cache_bucket), starts=starts)
        knobs = (float(temperature), int(top_k), float(top_p))
        key = jax.random.key(seed)
        token, cache = _prefill(self.graphdef, self.state, jnp.asarray(tokens), cache, jax.random.fold_in(key, 0), knobs)
        outs: list[list[int]] = [[] for _ in prompts]
        done = np.zeros((b,), bool)
        stop = set(int(s) for s in stop_ids)
        for step in range(max_new_tokens):
            host = np.asarray(token)
            for r in range(b):
                if not done[r]:
                    outs[r].append(int(host[r]))
                    done[r] = int(host[r]) in stop
            if done.all() or step == max_new_tokens - 1:
                break
            token, cache = _decode(self.graphdef, self.state, token, cache, jax.random.fold_in(key, step + 1), knobs)
        return outs


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score_tokens(graphdef, state, tokens, segment_ids):
    model = nnx.merge(graphdef, state)
    logits, _ = model(tokens, segment_ids=segment_ids)
    lp, _ = token_logprobs(logits[:, :-1], tokens[:, 1:])
    return lp, jnp.argmax(logits[:, :-1], axis=-1) == tokens[:, 1:]


def _pow2(n: int, lo: int = 32) -> int:
    return max(lo, 1 << (max(n, 1) - 1).bit_length())


def dense_loglikelihood(model: Transformer, pairs: Sequence[tuple[list[int], int]], *, batch_size: int = 8,
                        token_budget: int = 8192) -> list[tuple[float, int, bool]]:
    """The former evaluation scorer: (summed log-prob, tokens, all-greedy) of ids[start:] given
    ids[:start] for each (ids, start), by plain forwards over right-padded, length-sorted
    batches ([rows, T], T a power of two, rows * T within the token budget)."""
    graphdef, state = nnx.split(model)
    order = sorted(range(len(pairs)), key=lambda j: -len(pairs[j][0]))
    out: list = [None] * len(pairs)
    i = 0
    while i < len(order):
        t = _pow2(len(pairs[order[i]][0]))
        rows = max(1, min(batch_size, token_budget // t))
        rows = 1 << (rows.bit_length() - 1)
        idx = order[i:i + rows]
        tokens = np.zeros((rows, t), np.int32)
        seg = np.zeros((rows, t), np.int32)
        for r, j in enumerate(idx):
            ids, _ = pairs[j]
            tokens[r, :len(ids)] = ids
            seg[r, :len(ids)] = 1
        lp, greedy = _score_tokens(graphdef, state, jnp.asarray(tokens), jnp.asarray(seg))
        lp, greedy = np.asarray(lp), np.asarray(greedy)
        for r, j in enumerate(idx):
            ids, start = pairs[j]
            span = slice(start - 1, len(ids) - 1)  # position p predicts token p + 1
            out[j] = (float(lp[r, span].sum()), len(ids) - start, bool(greedy[r, span].all()))
        i += len(idx)
    return out


def save_tiny_checkpoint(path, gguf_path, **overrides):
    """Saves a tiny random model with the real SmolLM2 tokenizer (chatml template) as a puyu
    checkpoint at `path` and returns `path` (its outputs are noise, its token ids real)."""
    import dataclasses
    from pathlib import Path

    from puyu_jax.checkpoint import save_checkpoint
    from puyu_jax.models import ModelConfig, init_model, to_flat
    from puyu_jax.tokenizer import tokenizer_from_gguf

    path = Path(path)
    tok = tokenizer_from_gguf(gguf_path)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                      num_kv_heads=2, max_position_embeddings=512, eos_token_id=tok.eos_id, chat_template="chatml")
    cfg = dataclasses.replace(cfg, **overrides)
    tok.save(path.parent / (path.name + "-tok"))
    files = {p.name: p for p in (path.parent / (path.name + "-tok")).iterdir()}
    save_checkpoint(path, cfg, {k: np.asarray(v) for k, v in to_flat(init_model(cfg)).items()}, tokenizer_files=files)
    return path
