"""The paged KV cache: a pool of fixed-size blocks per layer, and the per-step view the model attends through.

Layout (per layer): k, v [k, n_blocks, block_size, e] (kv heads first, so tensor
parallelism shards the pool on its leading axis). With int8 KV the pages hold int8
and `k_scale`, `v_scale` [k, n_blocks, block_size] float32 hold one symmetric scale per
token and head; with int4 KV the pages are [k, n_blocks, block_size / 2, e] uint8 (two
tokens' codes a byte) and `k_zero`, `v_zero` hold a zero point per token and head beside the
scales; int4 keys and values are stored, and attended, in a rotated basis (the formats and the
rotation: `puyu_jax.quant.kv`). Block 0 is the null block: padded tokens write there, and no sequence
ever owns it.

A token at position p of a sequence lives at page block_table[p // block_size], slot
p % block_size; its flat slot id is page * block_size + slot.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from puyu_jax.kernels.paged_attention import paged_attention
from puyu_jax.kernels.target import kernel_backend
from puyu_jax.models.config import ModelConfig
from puyu_jax.models.transformer import attention
from puyu_jax.quant.kv import dequantize_kv, dequantize_kv4, kv4_rotation, quantize_kv, quantize_kv4, unpack_pages4

Array = jax.Array


@flax.struct.dataclass
class PagedKVCache:
    k: list[Array]
    v: list[Array]
    k_scale: list[Array] | None = None
    v_scale: list[Array] | None = None
    k_zero: list[Array] | None = None  # int4 only
    v_zero: list[Array] | None = None

    @property
    def num_blocks(self) -> int:
        return self.k[0].shape[1]

    @property
    def block_size(self) -> int:
        return self.k[0].shape[2] * (2 if self.k_zero is not None else 1)  # int4: two tokens a row

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    def layer_meta(self, i: int) -> dict:
        """Keyword arguments of one layer's scales / zero points for the attention kernels."""
        if not self.quantized:
            return {}
        meta = {"k_scale": self.k_scale[i], "v_scale": self.v_scale[i]}
        if self.k_zero is not None:
            meta.update(k_zero=self.k_zero[i], v_zero=self.v_zero[i])
        return meta

    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves(self))


def kv_bytes_per_block(cfg: ModelConfig, block_size: int, kv_dtype: str) -> int:
    """Bytes one block takes over all layers (keys + values, and scales for int8)."""
    per_token = cfg.num_kv_heads * cfg.dim_per_head
    if kv_dtype == "int8":
        elem = per_token + cfg.num_kv_heads * 4
    elif kv_dtype == "int4":
        elem = per_token // 2 + cfg.num_kv_heads * 8
    else:
        elem = per_token * jnp.dtype(cfg.dtype).itemsize
    return 2 * cfg.num_layers * block_size * elem


def init_paged_cache(cfg: ModelConfig, num_blocks: int, block_size: int, kv_dtype: str = "auto", sharding=None) -> PagedKVCache:
    """An empty pool of `num_blocks` blocks (block 0 included) for every layer."""
    shape = (cfg.num_kv_heads, num_blocks, block_size, cfg.dim_per_head)
    dtype = jnp.dtype(cfg.dtype)
    if kv_dtype == "int8":
        dtype = jnp.int8
    elif kv_dtype == "int4":
        if block_size % 2:
            raise ValueError(f"kv_dtype=int4 needs an even block_size, got {block_size}")
        shape, dtype = (cfg.num_kv_heads, num_blocks, block_size // 2, cfg.dim_per_head), jnp.uint8

    def zeros(shape, dtype, spec_dims):
        if sharding is None:
            return jnp.zeros(shape, dtype)
        return jax.device_put(jnp.zeros(shape, dtype), sharding(spec_dims))

    k = [zeros(shape, dtype, 4) for _ in range(cfg.num_layers)]
    v = [zeros(shape, dtype, 4) for _ in range(cfg.num_layers)]
    if kv_dtype not in ("int8", "int4"):
        return PagedKVCache(k, v)
    meta = lambda: [zeros((cfg.num_kv_heads, num_blocks, block_size), jnp.float32, 3)  # noqa: E731
                    for _ in range(cfg.num_layers)]
    if kv_dtype == "int8":
        return PagedKVCache(k, v, meta(), meta())
    return PagedKVCache(k, v, meta(), meta(), meta(), meta())


@flax.struct.dataclass
class PagedBatch:
    """One step's view of the pool: which tokens are new, where they go, what each row sees.

    tokens are the model input [b, t]; this holds, per row b and new token t:
      positions [b, t] absolute positions; slots [b, t] flat slot ids to write (null
      block for padding); block_tables [b, n] pages of each row; lengths [b] keys valid
      after this step's writes; logits_index [b] which new token gives the row's logits.
    """

    kv: PagedKVCache
    positions: Array
    slots: Array
    block_tables: Array
    lengths: Array
    logits_index: Array
    window: int = flax.struct.field(pytree_node=False, default=0)
    attention_impl: str = flax.struct.field(pytree_node=False, default="auto")
    mesh: Any = flax.struct.field(pytree_node=False, default=None)  # tensor-parallel mesh, if any

    def layer(self, i: int) -> "_LayerView":
        return _LayerView(self, i)


class _LayerView:
    """The model's handle on one layer of the pool (a `models.transformer.LayerCache`)."""

    def __init__(self, cache: PagedBatch, index: int):
        self.cache = cache
        self.index = index

    def attend(self, q: Array, k: Array, v: Array, scale: float) -> tuple[Array, "_LayerView"]:
        batch, i = self.cache, self.index
        kv = batch.kv
        rot = None
        if kv.k_zero is not None:  # int4: attend in the rotated basis (`quant.kv.kv4_rotation`)
            rot = kv4_rotation(q.shape[-1], q.dtype)
            q, k, v = q @ rot, k @ rot, v @ rot
        meta = kv.layer_meta(i)
        pages_k, mk = _write(kv.k[i], {n[2:]: x for n, x in meta.items() if n[0] == "k"}, k, batch.slots)
        pages_v, mv = _write(kv.v[i], {n[2:]: x for n, x in meta.items() if n[0] == "v"}, v, batch.slots)
        meta = {**{"k_" + n: x for n, x in mk.items()}, **{"v_" + n: x for n, x in mv.items()}}
        if q.shape[1] == 1:
            out = _decode_attention(batch, q[:, 0], pages_k, pages_v, meta, scale)[:, None]
        else:
            out = _prefill_attention(q, k, v, pages_k, pages_v, meta, batch, scale)
        if rot is not None:
            out = out @ rot.T
        kv = kv.replace(k=_set(kv.k, i, pages_k), v=_set(kv.v, i, pages_v),
                        **{name: _set(getattr(kv, name), i, x) for name, x in meta.items()})
        return out.astype(q.dtype), _LayerView(batch.replace(kv=kv), i)


def _decode_attention(batch: PagedBatch, q, pages_k, pages_v, meta: dict, scale: float) -> Array:
    """Paged decode attention; under tensor parallelism a Pallas kernel runs per device on its
    kv heads inside shard_map (XLA cannot partition a custom kernel by itself)."""
    impl = batch.attention_impl
    if impl == "auto":
        impl = "reference" if kernel_backend() == "cpu" else "pallas"
    fn = functools.partial(paged_attention, scale=scale, window=batch.window, impl=impl)
    mesh = batch.mesh
    kv_heads = pages_k.shape[0]
    if mesh is None or impl == "reference" or kv_heads % mesh.shape["tensor"]:
        return fn(q, pages_k, pages_v, batch.lengths, batch.block_tables, **meta)
    heads, pool, rep = P(None, "tensor"), P("tensor"), P()
    names = tuple(meta)

    def body(q, k, v, lens, tabs, *extra):
        return fn(q, k, v, lens, tabs, **dict(zip(names, extra)))

    args = (q, pages_k, pages_v, batch.lengths, batch.block_tables, *meta.values())
    specs = (heads, pool, pool, rep, rep) + (pool,) * len(meta)
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=heads)(*args)


def _set(items: list, i: int, value) -> list:
    items = list(items)
    items[i] = value
    return items


def _write(pages: Array, meta: dict, x: Array, slots: Array) -> tuple[Array, dict]:
    """Scatters new keys or values x [b, t, k, e] into pages [k, n, s, e] at flat slots [b, t]
    (quantized first when the pool is; `meta` holds the pool's "scale" / "zero" arrays).

    The scatter indexes (page, slot) of the 4-D pool directly: reshaping the pool to
    [k, n*s, e] around it makes XLA duplicate the update for the two layouts and copy
    the whole pool every step instead of updating it in place.
    """
    kh = pages.shape[0]
    s = pages.shape[2] * (2 if "zero" in meta else 1)
    flat = slots.reshape(-1)
    page, slot = flat // s, flat % s
    x = x.reshape(-1, kh, x.shape[-1]).transpose(1, 0, 2)  # k, b*t, e
    new = {}
    if "zero" in meta:
        x, new["scale"], new["zero"] = quantize_kv4(x)
    elif meta:
        x, new["scale"] = quantize_kv(x)
    meta = {name: meta[name].at[:, page, slot].set(val, mode="promise_in_bounds") for name, val in new.items()}
    if "zero" in meta:
        return _write_nibbles(pages, x, page, slot), meta
    pages = pages.at[:, page, slot].set(x.astype(pages.dtype), mode="promise_in_bounds")
    return pages, meta


def _write_nibbles(pages: Array, codes: Array, page: Array, slot: Array) -> Array:
    """int4 pages [k, n, s/2, e]: token `slot` lives in row slot % (s/2), low nibble for the page's
    first half of tokens, high for the second. Two read-modify-write passes, low nibbles then high:
    within a pass no two tokens share a byte, so each pass is one gather and one scatter; tokens of
    the other half write the null block (block 0), whose contents nothing reads."""
    half = pages.shape[2]
    row, high = slot % half, slot >= half
    codes = codes.astype(jnp.uint8)
    for upper in (False, True):
        target = jnp.where(high == upper, page, 0)
        old = pages[:, target, row]  # k, m, e
        new = (old & 0x0F) | (codes << 4) if upper else (old & 0xF0) | codes
        pages = pages.at[:, target, row].set(new, mode="promise_in_bounds")
    return pages


def gather_pages(pages: Array, block_tables: Array, dtype, scale: Array | None = None,
                 zero: Array | None = None) -> Array:
    """[k, n, s, e] pages -> [b, n_b * s, k, e] keys or values of each row, in position order."""
    g = pages[:, block_tables]  # k, b, nb, s, e (s / 2 rows of packed bytes for int4)
    if zero is not None:
        g = dequantize_kv4(unpack_pages4(g), scale[:, block_tables], zero[:, block_tables], dtype)
    elif scale is not None:
        g = dequantize_kv(g, scale[:, block_tables], dtype)
    kh, b, nb, s, e = g.shape
    return g.reshape(kh, b, nb * s, e).transpose(1, 2, 0, 3).astype(dtype)


def _prefill_attention(q, k, v, pages_k, pages_v, meta: dict, batch: PagedBatch, scale: float) -> Array:
    """Causal attention of t new tokens per row: over the row's cached prefix (positions
    before its first new token, gathered from the pages in `batch.block_tables`, which for a
    prefill step list only the prefix's blocks; none for a fresh prompt) and over the new
    keys and values themselves, taken as computed (rounded through int8 / int4 when the pool is
    quantized, so they read as the pool will hold them)."""
    b, t = q.shape[:2]
    if "k_zero" in meta:
        k = dequantize_kv4(*quantize_kv4(k), q.dtype)
        v = dequantize_kv4(*quantize_kv4(v), q.dtype)
    elif meta:
        k = dequantize_kv(*quantize_kv(k), q.dtype)
        v = dequantize_kv(*quantize_kv(v), q.dtype)
    start = batch.positions[:, :1]  # [b, 1] first new position
    i = jnp.arange(t)
    n_new = batch.lengths - start[:, 0]  # real new tokens per row
    mask = (i[None, None, :] <= i[None, :, None]) & (i[None, None, :] < n_new[:, None, None])
    if batch.window:
        mask &= batch.positions[:, :, None] - batch.positions[:, None, :] < batch.window
    keys, values = k.astype(q.dtype), v.astype(q.dtype)
    if batch.block_tables.shape[1]:
        prefix_k = gather_pages(pages_k, batch.block_tables, q.dtype, meta.get("k_scale"), meta.get("k_zero"))
        prefix_v = gather_pages(pages_v, batch.block_tables, q.dtype, meta.get("v_scale"), meta.get("v_zero"))
        j = jnp.arange(prefix_k.shape[1])
        pmask = jnp.broadcast_to(j[None, None, :] < start[:, :, None], (b, t, j.shape[0]))
        if batch.window:
            pmask &= batch.positions[:, :, None] - j[None, None, :] < batch.window
        keys = jnp.concatenate([prefix_k, keys], axis=1)
        values = jnp.concatenate([prefix_v, values], axis=1)
        mask = jnp.concatenate([pmask, mask], axis=2)
    return attention(q, keys, values, mask, scale, "einsum")


def copy_blocks(kv: PagedKVCache, src: Array, dst: Array) -> PagedKVCache:
    """Copies whole blocks src[i] -> dst[i] in every layer (copy-on-write for forked sequences)."""

    def cp(x: Any):
        return x.at[:, dst].set(x[:, src])

    return jax.tree.map(cp, kv)
