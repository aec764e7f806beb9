"""The model runner: jit'd prefill / decode steps over the paged KV pool, with shape buckets.

`ModelRunner.step` takes one batch of rows (each row: some new tokens of one sequence,
their positions and slots, and the sequence's block table) and returns one sampled
token per row. Shapes are padded to power-of-two buckets (rows, new tokens per row,
blocks per row, penalty history), so a serving process compiles a bounded set of
programs during warm-up and never again in steady state.

Under tensor parallelism the parameters are placed with the training rule table's
`tp` preset (heads, kv_heads, mlp and vocab over the `tensor` mesh axis) and the pool
is sharded over its kv-head axis; XLA inserts the collectives.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from puyu_jax.models.transformer import Transformer
from puyu_jax.parallel.sharding import ParallelConfig, build_mesh, preset_rules
from puyu_jax.serve.kv_cache import PagedBatch, PagedKVCache, copy_blocks, init_paged_cache
from puyu_jax.serve.sampling import SamplingArrays, SamplingFlags, sample


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(n, minimum)
    return 1 << (n - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("graphdef", "flags", "window", "impl", "mesh"), donate_argnames=("kv",))
def _step(graphdef, state, kv: PagedKVCache, tokens, positions, slots, block_tables, lengths, logits_index,
          sampling: SamplingArrays, bitmask=None, *, flags: SamplingFlags, window: int, impl: str, mesh=None):
    model = nnx.merge(graphdef, state)
    batch = PagedBatch(kv, positions, slots, block_tables, lengths, logits_index, window=window, attention_impl=impl,
                       mesh=mesh)
    logits, batch = model(tokens, cache=batch, last_only=True)
    # bitmask: constrained decoding's allowed tokens per row, or None (a batch of free rows compiles no mask)
    return sample(logits[:, 0], sampling, flags, bitmask), batch.kv


@functools.partial(jax.jit, static_argnames=("graphdef", "window", "impl", "top"), donate_argnames=("kv",))
def _score(graphdef, state, kv: PagedKVCache, tokens, positions, slots, block_tables, lengths, *, window: int, impl: str,
           top: int = 0):
    """Log-probs of tokens[:, 1:] given their prefixes (prompt scoring through the paged path),
    and the `top` best (ids, log-probs) at each position."""
    model = nnx.merge(graphdef, state)
    zeros = jnp.zeros(tokens.shape[:1], jnp.int32)
    batch = PagedBatch(kv, positions, slots, block_tables, lengths, zeros, window=window, attention_impl=impl)
    logits, batch = model(tokens, cache=batch)
    logprobs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    chosen = jnp.take_along_axis(logprobs, tokens[:, 1:, None], axis=-1)[..., 0]
    if top:
        top_lp, top_ids = jax.lax.top_k(logprobs, top)
        return chosen, top_ids.astype(jnp.int32), top_lp, batch.kv
    return chosen, None, None, batch.kv


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


class ModelRunner:
    """Owns the parameters, the KV pool and the compiled steps."""

    def __init__(self, model: Transformer, *, num_blocks: int, block_size: int, kv_dtype: str = "auto",
                 tp: int = 1, attention_impl: str = "auto", max_blocks_per_seq: int = 0):
        self.cfg = model.cfg
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.max_blocks_per_seq = max_blocks_per_seq or num_blocks
        self.impl = attention_impl
        self.window = self.cfg.sliding_window or 0
        self.graphdef, state = nnx.split(model)
        self.mesh = None
        if tp > 1:
            if tp > len(jax.devices()):
                raise ValueError(f"tp={tp} but only {len(jax.devices())} devices are visible")
            self.mesh = build_mesh(ParallelConfig(preset="tp", data=1, tensor=tp), jax.devices()[:tp])
            rules, _ = preset_rules("tp")
            logical = nnx.get_partition_spec(state)

            def place(x, spec):
                names = tuple(spec) if isinstance(spec, P) else ()
                if not hasattr(x, "shape") or len(names) != x.ndim:
                    names = (None,) * getattr(x, "ndim", 0)
                return jax.device_put(x, NamedSharding(self.mesh, rules.spec(names, x.shape, self.mesh)))

            state = jax.tree.map(place, state, logical)
            pool = lambda ndim: NamedSharding(  # noqa: E731
                self.mesh, rules.spec(("kv_heads",) + (None,) * (ndim - 1), (self.cfg.num_kv_heads,) + (1,) * (ndim - 1), self.mesh))
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

    def _layout(self, rows: list[Row], t_bucket: int):
        """Padded token / position / slot / table arrays for rows (numpy)."""
        b = bucket(len(rows))
        bs = self.block_size
        # at least 4 blocks per row: short sequences share one compiled shape
        nb = bucket(max(-(-(r.start + len(r.tokens)) // bs) for r in rows), 4)
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
            tables[i, : len(table)] = table[:nb]
            slots[i, :n] = table[pos // bs] * bs + pos % bs
            slots[i, n:] = pos[-1] % bs  # null block 0
            lengths[i] = r.start + n
            last[i] = n - 1
        return tokens, positions, slots, tables, lengths, last

    def _sampling(self, rows: list[Row], b: int, flags: SamplingFlags) -> SamplingArrays:
        def col(name, default, dtype):
            a = np.full((b,), default, dtype)
            a[: len(rows)] = [getattr(r, name) for r in rows]
            return a

        key_data = np.zeros((b, 2), np.uint32)
        for i, r in enumerate(rows):
            if r.key_data is not None:
                key_data[i] = r.key_data
        if flags.penalties:
            length = bucket(max(len(r.history or ()) for r in rows), 16)
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

    def step(self, rows: list[Row], flags: SamplingFlags, bitmask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Runs one prefill (rows with several new tokens) or decode (one token each) batch.

        bitmask: optional [len(rows), ceil(vocab / 32)] int32 allowed tokens per row
        (constrained decoding; free rows all ones), padded here to the row bucket.
        Returns numpy arrays with one entry per row: tokens, logprob (and top_ids,
        top_logprobs when flags.top_logprobs).
        """
        t = max(len(r.tokens) for r in rows)
        t_bucket = 1 if t == 1 else bucket(t, 16)
        tokens, positions, slots, tables, lengths, last = self._layout(rows, t_bucket)
        sampling = self._sampling(rows, tokens.shape[0], flags)
        if bitmask is not None:
            padded = np.full((tokens.shape[0], bitmask.shape[1]), -1, np.int32)
            padded[: len(rows)] = bitmask
            bitmask = self._put(padded)
        out, self.kv = _step(
            self.graphdef, self.state, self.kv, *map(self._put, (tokens, positions, slots, tables, lengths, last)),
            sampling, bitmask, flags=flags, window=self.window, impl=self.impl, mesh=self.mesh,
        )
        out = jax.device_get(out)
        return {k: np.asarray(v)[: len(rows)] for k, v in out.items()}

    def score(self, token_ids: list[int], block_table: list[int], top: int = 0):
        """Log-probs [n-1] of token_ids[1:] computed through the paged pool (blocks given).

        With top > 0 returns (log-probs, top ids [n-1, top], top log-probs [n-1, top]).
        """
        row = Row(tokens=list(token_ids), start=0, block_table=block_table)
        tokens, positions, slots, tables, lengths, _ = self._layout([row], bucket(len(token_ids), 16))
        lp, ids, tlp, self.kv = _score(self.graphdef, self.state, self.kv,
                                       *map(self._put, (tokens, positions, slots, tables, lengths)),
                                       window=self.window, impl=self.impl, top=top)
        n = len(token_ids) - 1
        if top:
            return np.asarray(lp)[0, :n], np.asarray(ids)[0, :n], np.asarray(tlp)[0, :n]
        return np.asarray(lp)[0, :n]

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copies KV blocks src -> dst (copy-on-write when a sequence forks)."""
        if not pairs:
            return
        n = bucket(len(pairs))
        src = np.zeros((n,), np.int32)
        dst = np.zeros((n,), np.int32)  # padding copies null -> null
        src[: len(pairs)], dst[: len(pairs)] = zip(*pairs)
        self.kv = _copy_blocks(self.kv, self._put(src), self._put(dst))

    @staticmethod
    def compiled_programs() -> int:
        """Programs compiled so far by the step functions (for no-recompile checks)."""
        return _step._cache_size() + _score._cache_size()


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
