"""The model runner: jit'd prefill / decode steps over the paged KV pool, with shape buckets.

`ModelRunner.step` takes one batch of rows (each row: some new tokens of one sequence,
their positions and slots, and the sequence's block table) and returns one sampled
token per row. Shapes are padded to power-of-two buckets (rows, new tokens per row,
blocks per row, penalty history), so a serving process compiles a bounded set of
programs during warm-up and never again in steady state.

Under tensor parallelism the parameters are placed by `ShardingPlan.serving(tp)` (the
training `tp` tables: heads, kv_heads, mlp and vocab over the `tensor` mesh axis; heads
that `tp` does not divide stay replicated) and the pool is sharded over its kv-head axis;
XLA inserts the collectives.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from puyu_jax.models.logprobs import token_logprobs
from puyu_jax.models.transformer import Transformer
from puyu_jax.parallel.sharding import ShardingPlan
from puyu_jax.serve.kv_cache import PagedBatch, PagedKVCache, copy_blocks, init_paged_cache
from puyu_jax.serve.sampling import SamplingArrays, SamplingFlags, sample


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(n, minimum)
    return 1 << (n - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("graphdef", "flags", "window", "impl", "mesh", "score_top"),
                   donate_argnames=("kv",))
def _step(graphdef, state, kv: PagedKVCache, tokens, positions, slots, block_tables, lengths, logits_index,
          sampling: SamplingArrays, score=None, bitmask=None, *, flags: SamplingFlags, window: int, impl: str, mesh=None,
          score_top: int = 0):
    """One forward over the pool, sampling one token per row at `logits_index`.

    With `score` ({"index": [b, S] new-token indices, "targets": [b, S] next-token ids}) it also
    returns the log-prob of each target and whether it was the argmax (prompt scoring), and the
    `score_top` best (ids, log-probs) at each scored position. `bitmask` [b, ceil(vocab / 32)] int32:
    constrained decoding's allowed tokens per row, or None (a batch of free rows compiles no mask).
    """
    model = nnx.merge(graphdef, state)
    index = logits_index[:, None]
    if score is not None:
        index = jnp.concatenate([score["index"], index], axis=1)
    batch = PagedBatch(kv, positions, slots, block_tables, lengths, index, window=window, attention_impl=impl,
                       mesh=mesh)
    logits, batch = model(tokens, cache=batch, last_only=True)
    out = sample(logits[:, -1], sampling, flags, bitmask)
    if score is not None:
        scored = logits[:, :-1]
        out["score_logprob"], logz = token_logprobs(scored, score["targets"])
        out["score_greedy"] = jnp.argmax(scored, axis=-1) == score["targets"]
        if score_top:
            top_logits, top_ids = jax.lax.top_k(scored, score_top)
            out["score_top_ids"], out["score_top_logprobs"] = top_ids.astype(jnp.int32), top_logits - logz[..., None]
    return out, batch.kv


@functools.partial(jax.jit, static_argnames=("graphdef", "flags", "window", "impl", "mesh", "steps"),
                   donate_argnames=("kv",))
def _decode_loop(graphdef, state, kv: PagedKVCache, tokens, positions, block_tables, limits, stop_ids,
                 sampling: SamplingArrays, history_len, *, flags: SamplingFlags, window: int, impl: str, mesh=None,
                 steps: int):
    """Up to `steps` decode steps in one dispatch (a `lax.while_loop` on the device).

    Row b feeds tokens[b] at positions[b] and keeps sampling until it has made limits[b]
    tokens or sampled one of stop_ids[b] (-1 padded); rows done early write to the null block.
    The loop ends when every row is done. Penalty histories grow on the device.

    Returns ({tokens [steps, b] (-1 once a row is done), logprob [steps, b], and top_ids /
    top_logprobs [steps, b, K] with flags.top_logprobs}, kv).
    """
    model = nnx.merge(graphdef, state)
    b = tokens.shape[0]
    bs = kv.block_size
    rows = jnp.arange(b)
    k_top = flags.top_logprobs
    out0 = {"tokens": jnp.full((steps, b), -1, jnp.int32), "logprob": jnp.zeros((steps, b), jnp.float32)}
    if k_top:
        out0["top_ids"] = jnp.zeros((steps, b, k_top), jnp.int32)
        out0["top_logprobs"] = jnp.zeros((steps, b, k_top), jnp.float32)

    def cond(carry):
        i, alive = carry[0], carry[4]
        return (i < steps) & jnp.any(alive)

    def body(carry):
        i, kv, tok, pos, alive, s, out = carry
        page = jnp.take_along_axis(block_tables, (pos // bs)[:, None], axis=1)[:, 0]
        slots = jnp.where(alive, page * bs + pos % bs, pos % bs)  # done rows write to the null block
        batch = PagedBatch(kv, pos[:, None], slots[:, None], block_tables, pos + 1, jnp.zeros((b,), jnp.int32),
                           window=window, attention_impl=impl, mesh=mesh)
        logits, batch = model(tok[:, None], cache=batch, last_only=True)
        res = sample(logits[:, 0], s, flags)
        new = res["tokens"]
        out = dict(out)
        out["tokens"] = out["tokens"].at[i].set(jnp.where(alive, new, -1))
        out["logprob"] = out["logprob"].at[i].set(res["logprob"])
        if k_top:
            out["top_ids"] = out["top_ids"].at[i].set(res["top_ids"])
            out["top_logprobs"] = out["top_logprobs"].at[i].set(res["top_logprobs"])
        if flags.penalties:  # the new token joins the row's history (as an output token)
            at = jnp.minimum(history_len + i, s.history.shape[1] - 1)
            s = s.replace(history=s.history.at[rows, at].set(jnp.where(alive, new, -1)),
                          history_is_output=s.history_is_output.at[rows, at].set(alive))
        stopped = jnp.any(new[:, None] == stop_ids, axis=1)
        alive = alive & ~stopped & (i + 1 < limits)
        s = s.replace(step=s.step + 1)
        return i + 1, batch.kv, new, pos + 1, alive, s, out

    carry = (jnp.int32(0), kv, tokens, positions, limits > 0, sampling, out0)
    _, kv, _, _, _, _, out = jax.lax.while_loop(cond, body, carry)
    return out, kv


_copy_blocks = jax.jit(copy_blocks, donate_argnums=0)


@dataclass
class Row:
    """One sequence's share of a step: `tokens` new tokens starting at position `start`."""

    tokens: list[int]
    start: int
    block_table: list[int]
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    key_data: np.ndarray | None = None
    step: int = 0
    history: list[int] | None = None  # prompt + output ids (penalties)
    num_prompt: int = 0  # how many of `history` are prompt tokens
    score_index: list[int] | None = None  # prompt scoring: which of `tokens` to score ...
    score_targets: list[int] | None = None  # ... against which next-token ids


def tp_state_shardings(state: nnx.State, plan: ShardingPlan):
    """NamedShardings of a model state under the serving plan (heads, kv_heads, mlp and vocab
    over `tensor` where they divide); quantized weights split along their output features as
    their matmul reads them (`quant.model.quant_weight_shardings`)."""
    logical = nnx.get_partition_spec(state)

    def one(spec, x):
        if jax.tree.leaves(x) != [x]:  # a structured value: a quantized weight's arrays
            from puyu_jax.quant.model import quant_weight_shardings

            return quant_weight_shardings(x, plan.mesh)
        names = tuple(spec) if isinstance(spec, P) else ()
        if len(names) != len(x.shape):
            names = (None,) * len(x.shape)
        return plan.sharding("params", names, tuple(x.shape))

    # `logical` has one spec per Variable; the state may hold a pytree there (int4 weights).
    return jax.tree.map(one, logical, state, is_leaf=lambda s: isinstance(s, P) or s is None)


def tp_pool_sharding(cfg, plan: ShardingPlan, ndim: int) -> NamedSharding:
    """Sharding of one layer's KV pages (ndim 4) or scales (ndim 3): kv heads over `tensor`."""
    return plan.sharding("params", ("kv_heads",) + (None,) * (ndim - 1), (cfg.num_kv_heads,) + (1,) * (ndim - 1))


class ModelRunner:
    """Owns the parameters, the KV pool and the compiled steps."""

    def __init__(self, model: Transformer, *, num_blocks: int, block_size: int, kv_dtype: str = "auto",
                 tp: int = 1, attention_impl: str = "auto"):
        self.cfg = model.cfg
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.impl = attention_impl
        self.window = self.cfg.sliding_window or 0
        self.graphdef, state = nnx.split(model)
        self.mesh = None
        if tp > 1:
            plan = ShardingPlan.serving(tp)
            self.mesh = plan.mesh
            state = jax.device_put(state, tp_state_shardings(state, plan))
            pool = functools.partial(tp_pool_sharding, self.cfg, plan)
            self.kv = init_paged_cache(self.cfg, num_blocks, block_size, kv_dtype, sharding=pool)
            self._replicated = NamedSharding(self.mesh, P())
        else:
            self.kv = init_paged_cache(self.cfg, num_blocks, block_size, kv_dtype)
            self._replicated = None
        self.state = state
        self.kv_dtype = kv_dtype

    # ------------------------------------------------------------------ host -> device

    def _put(self, x):
        return jnp.asarray(x) if self._replicated is None else jax.device_put(x, self._replicated)

    def _layout(self, rows: list[Row], t_bucket: int, ahead: list[int] | None = None):
        """Padded token / position / slot / table arrays for rows (numpy); the tables cover
        `ahead[i]` positions from each row's start when given (multi-step decode)."""
        b = bucket(len(rows))
        bs = self.block_size
        if t_bucket > 1:
            # prefill attends to the new tokens directly: the tables list only the cached
            # prefix's blocks (none when every row starts a fresh prompt)
            span = [r.start for r in rows]
            nb = max(-(-n // bs) for n in span)
            nb = bucket(nb, 4) if nb else 0
        else:
            span = [r.start + (a if ahead is not None else len(r.tokens)) for r, a in zip(rows, ahead or [0] * len(rows))]
            # at least 4 blocks per row: short sequences share one compiled shape
            nb = bucket(max(-(-n // bs) for n in span), 4)
        nb = min(nb, self.num_blocks)
        tokens = np.zeros((b, t_bucket), np.int32)
        positions = np.zeros((b, t_bucket), np.int32)
        slots = np.zeros((b, t_bucket), np.int32)  # padding writes to the null block 0
        tables = np.zeros((b, nb), np.int32)
        lengths = np.zeros((b,), np.int32)
        last = np.zeros((b,), np.int32)
        for i, r in enumerate(rows):
            n = len(r.tokens)
            tokens[i, :n] = r.tokens
            pos = np.arange(r.start, r.start + n)
            positions[i, :n] = pos
            positions[i, n:] = pos[-1]
            table = np.asarray(r.block_table, np.int32)
            tables[i, : min(len(table), nb)] = table[:nb]
            slots[i, :n] = table[pos // bs] * bs + pos % bs
            slots[i, n:] = pos[-1] % bs  # null block 0
            lengths[i] = r.start + n
            last[i] = n - 1
        return tokens, positions, slots, tables, lengths, last

    def _sampling(self, rows: list[Row], b: int, flags: SamplingFlags, extra: int = 0) -> SamplingArrays:
        """Per-row sampling arrays; `extra` leaves room for that many more history tokens."""
        def col(name, default, dtype):
            a = np.full((b,), default, dtype)
            a[: len(rows)] = [getattr(r, name) for r in rows]
            return a

        key_data = np.zeros((b, 2), np.uint32)
        for i, r in enumerate(rows):
            if r.key_data is not None:
                key_data[i] = r.key_data
        if flags.penalties:
            # the same smallest span as the block tables (4 blocks): short sequences of any
            # length share one program, so the warm-up's throwaway prompts cover them
            length = bucket(max(len(r.history or ()) for r in rows) + extra, 4 * self.block_size)
            history = np.full((b, length), -1, np.int32)
            is_out = np.zeros((b, length), bool)
            for i, r in enumerate(rows):
                h = r.history or []
                history[i, : len(h)] = h
                is_out[i, r.num_prompt: len(h)] = True
        else:
            history, is_out = np.full((b, 1), -1, np.int32), np.zeros((b, 1), bool)
        arrays = SamplingArrays(
            temperature=col("temperature", 0.0, np.float32), top_k=col("top_k", 0, np.int32),
            top_p=col("top_p", 1.0, np.float32), min_p=col("min_p", 0.0, np.float32),
            repetition_penalty=col("repetition_penalty", 1.0, np.float32),
            presence_penalty=col("presence_penalty", 0.0, np.float32),
            frequency_penalty=col("frequency_penalty", 0.0, np.float32),
            key_data=key_data, step=col("step", 0, np.int32), history=history, history_is_output=is_out,
        )
        return jax.tree.map(self._put, arrays)

    # ------------------------------------------------------------------ steps

    def _score_arrays(self, rows: list[Row], b: int, t_bucket: int):
        """{"index", "targets"} [b, S] for rows that score prompt tokens (None when none does);
        S is a power of two from 16 up to the step's token bucket (few compiled shapes)."""
        if not any(r.score_index for r in rows):
            return None
        length = min(bucket(max(len(r.score_index or ()) for r in rows), 16), t_bucket)
        index = np.zeros((b, length), np.int32)
        targets = np.zeros((b, length), np.int32)
        for i, r in enumerate(rows):
            if r.score_index:
                index[i, : len(r.score_index)] = r.score_index
                targets[i, : len(r.score_targets)] = r.score_targets
        return {"index": self._put(index), "targets": self._put(targets)}

    def step(self, rows: list[Row], flags: SamplingFlags, score_top: int = 0,
             bitmask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Runs one prefill (rows with several new tokens) or decode (one token each) batch.

        bitmask: optional [len(rows), ceil(vocab / 32)] int32 allowed tokens per row
        (constrained decoding; free rows all ones), padded here to the row bucket.
        Returns numpy arrays with one entry per row: tokens, logprob (and top_ids,
        top_logprobs when flags.top_logprobs); for rows with `score_index`, score_logprob /
        score_greedy [rows, S] (and score_top_ids / score_top_logprobs [rows, S, score_top]).
        """
        t = max(len(r.tokens) for r in rows)
        t_bucket = 1 if t == 1 else bucket(t, 16)
        tokens, positions, slots, tables, lengths, last = self._layout(rows, t_bucket)
        sampling = self._sampling(rows, tokens.shape[0], flags)
        score = self._score_arrays(rows, tokens.shape[0], t_bucket)
        if bitmask is not None:
            padded = np.full((tokens.shape[0], bitmask.shape[1]), -1, np.int32)
            padded[: len(rows)] = bitmask
            bitmask = self._put(padded)
        out, self.kv = _step(
            self.graphdef, self.state, self.kv, *map(self._put, (tokens, positions, slots, tables, lengths, last)),
            sampling, score, bitmask, flags=flags, window=self.window, impl=self.impl, mesh=self.mesh,
            score_top=score_top if score is not None else 0,
        )
        out = jax.device_get(out)
        return {k: np.asarray(v)[: len(rows)] for k, v in out.items()}

    def decode(self, rows: list[Row], flags: SamplingFlags, limits: list[int], stop_ids: list[list[int]],
               steps: int) -> dict[str, np.ndarray]:
        """Up to `steps` decode tokens per row in one dispatch (see `_decode_loop`).

        Each row has one new token (the last sampled one) and blocks for `limits[i]` positions
        from there. Returns numpy arrays [steps, rows] (tokens -1 after a row is done).
        """
        b = bucket(len(rows))
        tokens, positions, _, tables, _, _ = self._layout(rows, 1, ahead=[max(1, x) for x in limits])
        sampling = self._sampling(rows, b, flags, extra=steps)
        lim = np.zeros((b,), np.int32)
        lim[: len(rows)] = limits
        width = bucket(max((len(x) for x in stop_ids), default=1), 4)
        stops = np.full((b, width), -1, np.int32)
        for i, x in enumerate(stop_ids):
            stops[i, : len(x)] = list(x)
        hist_len = np.zeros((b,), np.int32)
        hist_len[: len(rows)] = [len(r.history or ()) for r in rows]
        out, self.kv = _decode_loop(
            self.graphdef, self.state, self.kv, *map(self._put, (tokens[:, 0], positions[:, 0], tables, lim, stops)),
            sampling, self._put(hist_len), flags=flags, window=self.window, impl=self.impl, mesh=self.mesh,
            steps=steps,
        )
        out = jax.device_get(out)
        return {k: np.asarray(v)[:, : len(rows)] for k, v in out.items()}

    def score(self, token_ids: list[int], block_table: list[int], top: int = 0):
        """Log-probs [n-1] of token_ids[1:] computed through the paged pool (blocks given).

        With top > 0 returns (log-probs, top ids [n-1, top], top log-probs [n-1, top]).
        """
        n = len(token_ids) - 1
        if n < 1:
            raise ValueError("scoring needs at least two tokens")
        row = Row(tokens=list(token_ids), start=0, block_table=block_table, score_index=list(range(n)),
                  score_targets=list(token_ids[1:]))
        out = self.step([row], SamplingFlags(), score_top=top)
        if top:
            return out["score_logprob"][0, :n], out["score_top_ids"][0, :n], out["score_top_logprobs"][0, :n]
        return out["score_logprob"][0, :n]

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copies KV blocks src -> dst (copy-on-write when a sequence forks)."""
        if not pairs:
            return
        n = bucket(len(pairs))
        src = np.zeros((n,), np.int32)
        dst = np.zeros((n,), np.int32)  # padding copies null -> null
        src[: len(pairs)], dst[: len(pairs)] = zip(*pairs)
        self.kv = _copy_blocks(self.kv, self._put(src), self._put(dst))

    def pool_intact(self) -> bool:
        """False once a failed step consumed (donated) the KV pool: the engine cannot go on."""
        return not any(x.is_deleted() for x in jax.tree.leaves(self.kv))

    @staticmethod
    def compiled_programs() -> int:
        """Programs compiled so far by the step functions (for no-recompile checks)."""
        return _step._cache_size() + _decode_loop._cache_size()


def score_logprobs(model: Transformer, token_ids: list[int], kv_dtype: str = "auto", block_size: int = 16,
                   attention_impl: str = "auto") -> np.ndarray:
    """Log-probs of token_ids[1:] through the real paged KV path (e.g. to measure int8 KV perplexity).

    Args:
      model: the model.
      token_ids: one sequence (its KV fits in a pool sized for it).
      kv_dtype: "auto" or "int8".
    Returns:
      [len(token_ids) - 1] float32.
    """
    n_blocks = -(-len(token_ids) // block_size)
    runner = ModelRunner(model, num_blocks=n_blocks + 1, block_size=block_size, kv_dtype=kv_dtype,
                         attention_impl=attention_impl)
    return runner.score(token_ids, list(range(1, n_blocks + 1)))
