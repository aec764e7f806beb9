"""Decode attention over a paged KV cache (float or int8 pages), with its plain-JAX twin.

Shapes (einsum letters): b sequences, h query heads, k kv heads, g = h // k query heads per kv
head (GQA), e head dim, n pages in the pool, s tokens per page (block_size), p pages per sequence
in the block table.

* `q [b, h, e]`: one decode query per sequence, the token at position `lengths[b] - 1` whose K/V
  are already written in the pages.
* `k_pages, v_pages [k, n, s, e]`: float (fp32 / bf16 / fp16) or int8. With int8 pages,
  `k_scale, v_scale [k, n, s]` float32 hold per-token-per-head scales (value = int8 * scale;
  the format is `puyu_jax.quant.kv`).
* `lengths [b]` int32: valid keys per sequence; 0 marks a padding row (its output is zeros).
* `block_tables [b, p]` int32: key position t of sequence b lives at page `block_tables[b, t // s]`,
  slot `t % s`. Entries past a sequence's last page are ignored.
* `window`: 0 = full attention; w > 0 keeps only the last w keys (position > lengths - 1 - w).

`paged_attention` picks a lowering: a Triton kernel on GPU, a Mosaic kernel on TPU, the twin on
CPU (`impl="pallas"` on CPU runs the GPU-style kernel in interpret mode, for tests).
Softmax is in fp32 everywhere; the kernels use an online softmax across pages.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from puyu_jax.kernels.target import kernel_backend, out_struct, pow2_at_least

__all__ = ["paged_attention", "paged_attention_reference"]

# Finite stand-in for -inf: exp(MASK - m) underflows to 0 without producing NaN from inf - inf.
_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)


# --------------------------------------------------------------------------- shared checks


def _check(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, window):
    b, h, e = q.shape
    kh, n, s, e_k = k_pages.shape
    if v_pages.shape != k_pages.shape:
        raise ValueError(f"k_pages {k_pages.shape} and v_pages {v_pages.shape} differ")
    if e_k != e:
        raise ValueError(f"head dim of q ({e}) and pages ({e_k}) differ")
    if h % kh:
        raise ValueError(f"{h} query heads are not a multiple of {kh} kv heads")
    if lengths.shape != (b,) or block_tables.ndim != 2 or block_tables.shape[0] != b:
        raise ValueError(f"lengths {lengths.shape} / block_tables {block_tables.shape} do not match batch {b}")
    quantized = jnp.issubdtype(k_pages.dtype, jnp.integer)
    if quantized != (k_scale is not None) or (k_scale is None) != (v_scale is None):
        raise ValueError("int8 pages need k_scale and v_scale; float pages take none")
    if quantized and (k_scale.shape != (kh, n, s) or v_scale.shape != (kh, n, s)):
        raise ValueError(f"scales must be {(kh, n, s)}, got {k_scale.shape} and {v_scale.shape}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return quantized


def _page_range(length, block_size: int, window: int):
    """[first, end) pages of a sequence that hold at least one attended key."""
    # lax.div (truncation) rather than //: operands are >= 0, and floor division's sign fix-up
    # does not lower on every Mosaic target.
    end = lax.div(length + block_size - 1, block_size)
    first = lax.div(jnp.maximum(length - window, 0), block_size) if window else jnp.zeros_like(length)
    return first, end


# --------------------------------------------------------------------------- reference twin


def paged_attention_reference(q, k_pages, v_pages, lengths, block_tables, *, scale: float,
                              k_scale=None, v_scale=None, window: int = 0) -> jax.Array:
    """Plain-JAX twin of `paged_attention` (same contract; the CPU serving path).

    One gather of all `p * s` key slots per sequence, a masked fp32 softmax, two einsums.

    Returns:
      `[b, h, e]` in q.dtype; rows with length 0 are zeros.
    """
    quantized = _check(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, window)
    b, h, e = q.shape
    kh, n, s, _ = k_pages.shape
    g = h // kh
    t = block_tables.shape[1] * s
    bt = jnp.clip(block_tables, 0, n - 1)
    # Gather in storage dtype (int8 moves 4x fewer bytes than its fp32 dequant), then widen.
    keys = k_pages[:, bt].reshape(kh, b, t, e).astype(jnp.float32)
    vals = v_pages[:, bt].reshape(kh, b, t, e).astype(jnp.float32)
    if quantized:
        keys = keys * k_scale[:, bt].reshape(kh, b, t, 1)
        vals = vals * v_scale[:, bt].reshape(kh, b, t, 1)
    qg = q.reshape(b, kh, g, e).astype(jnp.float32)
    scores = jnp.einsum("bkge,kbte->bkgt", qg, keys) * scale
    pos = jnp.arange(t, dtype=jnp.int32)[None, :]
    length = lengths.astype(jnp.int32)[:, None]
    valid = pos < length
    if window:
        valid &= pos >= length - window
    valid = valid[:, None, None, :]
    scores = jnp.where(valid, scores, _MASK)
    m = jnp.max(scores, axis=-1, keepdims=True)
    p = jnp.where(valid, jnp.exp(scores - m), 0.0)
    denom = jnp.sum(p, axis=-1, keepdims=True)
    out = jnp.einsum("bkgt,kbte->bkge", p, vals) / jnp.maximum(denom, jnp.finfo(jnp.float32).tiny)
    return out.reshape(b, h, e).astype(q.dtype)


# --------------------------------------------------------------------------- GPU-style kernel


def _gpu_kernel(lengths_ref, bt_ref, q_ref, k_ref, v_ref, *refs, scale: float, window: int,
                pages_per_chunk: int, quantized: bool):
    """One program = (sequence, kv head, chunk of pages); all g query heads of the kv head at once.

    Refs: lengths `[1]`, bt `[p]`, q `[G, e]` (g padded to G), k/v `[n, s, e]` (the kv head's pool),
    scales `[n, s]` when quantized; outputs o `[G, e]` (unnormalized, fp32), m and l `[G]`.
    """
    if quantized:
        ks_ref, vs_ref, o_ref, m_ref, l_ref = refs
    else:
        o_ref, m_ref, l_ref = refs
    chunk = pl.program_id(2)
    block_size = k_ref.shape[1]
    length = lengths_ref[0]
    first, end = _page_range(length, block_size, window)
    lo = jnp.maximum(first, chunk * pages_per_chunk)
    hi = jnp.minimum(end, (chunk + 1) * pages_per_chunk)
    q = q_ref[...]
    gq, e = q.shape

    def body(i, carry):
        o, m, l = carry
        page = bt_ref[i]
        k = k_ref[page]  # [s, e]
        v = v_ref[page]
        if quantized:
            # int8 -> q.dtype is exact; the per-key scale is applied to the logits after the dot.
            k = k.astype(q.dtype)
            v = v.astype(q.dtype)
        logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        logits = logits * scale
        if quantized:
            logits = logits * ks_ref[page][None, :]
        pos = i * block_size + lax.broadcasted_iota(jnp.int32, (1, block_size), 1)
        valid = pos < length
        if window:
            valid &= pos >= length - window
        logits = jnp.where(valid, logits, _MASK)
        m_new = jnp.maximum(m, jnp.max(logits, axis=1))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(logits - m_new[:, None])
        l = l * corr + jnp.sum(p, axis=1)
        if quantized:
            p = p * vs_ref[page][None, :]  # value scales ride on the weights of the p @ v dot
        o = o * corr[:, None] + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        return o, m_new, l

    init = (jnp.zeros((gq, e), jnp.float32), jnp.full((gq,), _MASK, jnp.float32), jnp.zeros((gq,), jnp.float32))
    # Every page in [lo, hi) holds at least one attended key, so no fully masked page reaches the
    # online softmax; an empty range leaves (0, MASK, 0), which the combine step turns into zeros.
    o, m, l = lax.fori_loop(lo, hi, body, init)
    o_ref[...] = o
    m_ref[...] = m
    l_ref[...] = l




def _paged_gpu(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, *, scale, window,
               pages_per_chunk, interpret):
    b, h, e = q.shape
    kh, n, s, _ = k_pages.shape
    g = h // kh
    p = block_tables.shape[1]
    # Triton tiles need power-of-two sizes and tensor-core dots at least 16 rows.
    gq = max(16, pow2_at_least(g))
    qg = q.reshape(b, kh, g, e)
    if gq != g:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, gq - g), (0, 0)))
    ppc = max(1, min(pages_per_chunk, p))
    chunks = -(-p // ppc)
    quantized = k_scale is not None
    in_specs = [
        pl.BlockSpec((1,), lambda bi, ki, c: (bi,)),
        pl.BlockSpec((None, p), lambda bi, ki, c: (bi, 0)),
        pl.BlockSpec((None, None, gq, e), lambda bi, ki, c: (bi, ki, 0, 0)),
        pl.BlockSpec((None, n, s, e), lambda bi, ki, c: (ki, 0, 0, 0)),
        pl.BlockSpec((None, n, s, e), lambda bi, ki, c: (ki, 0, 0, 0)),
    ]
    args = [lengths.astype(jnp.int32), jnp.clip(block_tables, 0, n - 1).astype(jnp.int32), qg, k_pages, v_pages]
    if quantized:
        in_specs += [pl.BlockSpec((None, n, s), lambda bi, ki, c: (ki, 0, 0))] * 2
        args += [k_scale.astype(jnp.float32), v_scale.astype(jnp.float32)]
    from jax.experimental.pallas import triton as pltriton

    o, m, l = pl.pallas_call(
        functools.partial(_gpu_kernel, scale=scale, window=window, pages_per_chunk=ppc, quantized=quantized),
        grid=(b, kh, chunks),
        in_specs=in_specs,
        out_specs=[
            pl.BlockSpec((None, None, None, gq, e), lambda bi, ki, c: (bi, ki, c, 0, 0)),
            pl.BlockSpec((None, None, None, gq), lambda bi, ki, c: (bi, ki, c, 0)),
            pl.BlockSpec((None, None, None, gq), lambda bi, ki, c: (bi, ki, c, 0)),
        ],
        out_shape=[
            out_struct((b, kh, chunks, gq, e), jnp.float32, *args),
            out_struct((b, kh, chunks, gq), jnp.float32, *args),
            out_struct((b, kh, chunks, gq), jnp.float32, *args),
        ],
        # Triton params select the Triton lowering on GPU (rather than Mosaic GPU).
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="paged_attention",
    )(*args)
    # Merge the chunks' partial softmaxes (flash-decoding style).
    m_all = jnp.max(m, axis=2, keepdims=True)
    corr = jnp.exp(m - m_all)
    l_all = jnp.sum(l * corr, axis=2)
    o_all = jnp.sum(o * corr[..., None], axis=2) / jnp.maximum(l_all, jnp.finfo(jnp.float32).tiny)[..., None]
    return o_all[:, :, :g].reshape(b, h, e).astype(q.dtype)


# --------------------------------------------------------------------------- TPU kernel


def _tpu_kernel(lengths_ref, bt_ref, q_ref, *refs, scale: float, window: int, quantized: bool,
                pages_per_block: int):
    """Grid (sequence, kv head, block of pages); the block axis is sequential and accumulates in VMEM.

    Refs: lengths `[b]` and flat block tables `[b * p]` in SMEM (scalar prefetch); q `[g, e]`;
    `pages_per_block` K pages then as many V pages, each `[s, e]` (one DMA each, picked by its
    index map); when quantized, the block's K and V scales `[k, pages_per_block * s]` (all kv
    heads: a lane-dense tile); o `[g, e]`; scratch m, l `[g, 1]` and acc `[g, e]` fp32. The
    block's pages are stacked into one `[pages_per_block * s, e]` operand: one q.k and one p.v
    dot and one online-softmax update per block.
    """
    ppb = pages_per_block
    k_refs, v_refs = refs[:ppb], refs[ppb:2 * ppb]
    rest = refs[2 * ppb:]
    if quantized:
        ks_ref, vs_ref, *rest = rest
    o_ref, m_sc, l_sc, acc_sc = rest
    bi, ki, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    block_size = k_refs[0].shape[0]
    length = lengths_ref[bi]
    first, end = _page_range(length, block_size, window)

    @pl.when(i == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, _MASK, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    # Blocks holding no attended page are skipped; inside a block, pages past the end (or before
    # the window) repeat a neighbouring page's DMA and are masked out by position.
    @pl.when((i * ppb < end) & ((i + 1) * ppb > first))
    def _step():
        q = q_ref[...]
        # int8 -> q.dtype is exact; the scales ride on the logits and on the p.v weights.
        k = jnp.concatenate([r[...].astype(q.dtype) for r in k_refs], axis=0) if ppb > 1 else k_refs[0][...].astype(q.dtype)
        v = jnp.concatenate([r[...].astype(q.dtype) for r in v_refs], axis=0) if ppb > 1 else v_refs[0][...].astype(q.dtype)
        logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale
        if quantized:
            logits = logits * ks_ref[pl.ds(ki, 1), :]
        pos = i * (ppb * block_size) + lax.broadcasted_iota(jnp.int32, logits.shape, 1)
        valid = pos < length
        if window:
            valid &= pos >= length - window
        logits = jnp.where(valid, logits, _MASK)
        m_prev = m_sc[...]
        m_new = jnp.maximum(m_prev, jnp.max(logits, axis=1, keepdims=True))
        corr = jnp.exp(m_prev - m_new)
        p = jnp.exp(logits - m_new)
        l_sc[...] = l_sc[...] * corr + jnp.sum(p, axis=1, keepdims=True)
        if quantized:
            p = p * vs_ref[pl.ds(ki, 1), :]
        acc_sc[...] = acc_sc[...] * corr + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        m_sc[...] = m_new

    @pl.when(i == pl.num_programs(2) - 1)
    def _finish():
        denom = jnp.maximum(l_sc[...], jnp.finfo(jnp.float32).tiny)
        o_ref[...] = (acc_sc[...] / denom).astype(o_ref.dtype)


def _cost_estimate(q, k_pages, block_tables, quantized: bool) -> pl.CostEstimate:
    """What a decode call moves and computes when every block-table entry is attended (the
    upper bound; XLA otherwise sees an opaque kernel reading whole page pools)."""
    b, h, e = q.shape
    kh, _, s, _ = k_pages.shape
    keys = b * kh * block_tables.shape[1] * s
    kv_bytes = 2 * keys * e * k_pages.dtype.itemsize + (2 * keys * 4 if quantized else 0)
    io_bytes = 2 * q.size * q.dtype.itemsize + block_tables.size * 4
    return pl.CostEstimate(flops=4 * keys * (h // kh) * e, transcendentals=keys * (h // kh),
                           bytes_accessed=kv_bytes + io_bytes)


def _paged_tpu(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, *, scale, window, interpret,
               pages_per_block):
    from jax.experimental.pallas import tpu as pltpu

    b, h, e = q.shape
    kh, n, s, _ = k_pages.shape
    g = h // kh
    p = block_tables.shape[1]
    quantized = k_scale is not None
    ppb = max(1, min(pages_per_block, p))
    if quantized and ppb < p:
        # The block's scales are one lane tile row: a multiple of 128 keys, or the whole table.
        lane_pages = max(1, 128 // s)
        ppb = min(-(-ppb // lane_pages) * lane_pages, p)
    blocks = -(-p // ppb)
    bt = jnp.clip(block_tables, 0, n - 1).astype(jnp.int32)

    def page_of(bi, i, lengths_ref, bt_ref):
        # Pages outside the attended range repeat a neighbouring page index, so the pipeline
        # issues no new DMA for them (and never reads an arbitrary table entry).
        first, end = _page_range(lengths_ref[bi], s, window)
        i = jnp.minimum(jnp.maximum(i, first), jnp.maximum(end - 1, 0))
        return bt_ref[bi * p + jnp.minimum(i, p - 1)]

    def page_spec(j):
        return pl.BlockSpec((None, None, s, e), lambda bi, ki, i, L, T: (ki, page_of(bi, i * ppb + j, L, T), 0, 0))

    in_specs = [pl.BlockSpec((None, None, g, e), lambda bi, ki, i, L, T: (bi, ki, 0, 0))]
    in_specs += [page_spec(j) for j in range(ppb)] * 2
    args = [q.reshape(b, kh, g, e)] + [k_pages] * ppb + [v_pages] * ppb
    if quantized:
        # The scales of each sequence's table, gathered outside the kernel ([b, k, p * s]: only what
        # the kernel reads): a page's scales are a 16-float row of the pool, too narrow a tile
        # for Mosaic, and reshaping the pool would copy all of it into a padded layout per call.
        def table_scales(x):
            x = x.astype(jnp.float32)[:, bt].transpose(1, 0, 2, 3).reshape(b, kh, p * s)
            return jnp.pad(x, ((0, 0), (0, 0), (0, (blocks * ppb - p) * s)))

        scale_spec = pl.BlockSpec((None, kh, ppb * s), lambda bi, ki, i, L, T: (bi, 0, i))
        in_specs += [scale_spec, scale_spec]
        args += [table_scales(k_scale), table_scales(v_scale)]
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, kh, blocks),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((None, None, g, e), lambda bi, ki, i, L, T: (bi, ki, 0, 0)),
        scratch_shapes=[pltpu.VMEM((g, 1), jnp.float32), pltpu.VMEM((g, 1), jnp.float32),
                        pltpu.VMEM((g, e), jnp.float32)],
    )
    out = pl.pallas_call(
        functools.partial(_tpu_kernel, scale=scale, window=window, quantized=quantized, pages_per_block=ppb),
        grid_spec=grid_spec,
        out_shape=out_struct((b, kh, g, e), q.dtype, lengths, block_tables, *args),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        cost_estimate=_cost_estimate(q, k_pages, block_tables, quantized),
        interpret=interpret,
        name="paged_attention_tpu",
    )(lengths.astype(jnp.int32), bt.reshape(-1), *args)
    return out.reshape(b, h, e)


# --------------------------------------------------------------------------- entry point


@functools.partial(jax.jit, static_argnames=("scale", "window", "lowering", "interpret", "pages_per_chunk",
                                             "pages_per_block"))
def _paged_pallas(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, *, scale, window, lowering,
                  interpret, pages_per_chunk, pages_per_block=16):
    if lowering == "tpu":
        return _paged_tpu(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, scale=scale,
                          window=window, interpret=interpret, pages_per_block=pages_per_block)
    return _paged_gpu(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, scale=scale, window=window,
                      pages_per_chunk=pages_per_chunk, interpret=interpret)


def paged_attention(q, k_pages, v_pages, lengths, block_tables, *, scale: float, k_scale=None, v_scale=None,
                    window: int = 0, impl: str = "auto", interpret: bool | None = None,
                    pages_per_chunk: int = 32, pages_per_block: int = 16, lowering: str | None = None) -> jax.Array:
    """Paged decode attention (GQA, optional sliding window, optional int8 pages).

    Args:
      q: `[b, h, e]` queries (fp32 / bf16 / fp16), h = k * g.
      k_pages, v_pages: `[k, n, s, e]` page pools, float or int8.
      lengths: `[b]` int32 valid keys per sequence (0 = padding row -> zeros).
      block_tables: `[b, p]` int32 page of each block of each sequence.
      scale: softmax scale applied to q.k (usually e ** -0.5).
      k_scale, v_scale: `[k, n, s]` float32 per-token scales, only with int8 pages.
      window: 0 = full attention, w > 0 = only the last w keys.
      impl: "auto" (Pallas on GPU / TPU, the reference on CPU), "pallas" (the kernel; interpret
        mode on CPU) or "reference".
      interpret: run the kernel in Pallas interpret mode; default: only on CPU.
      pages_per_chunk: GPU kernel only: pages per program along the third grid axis; chunks of a
        sequence run in parallel and are merged afterwards (flash-decoding).
      pages_per_block: TPU kernel only: pages fetched (one DMA each, pipelined) per grid step; a
        grid step costs ~0.35 us of fixed overhead, far more than one small page takes to arrive.
      lowering: "gpu" (Triton-style kernel) or "tpu" (Mosaic kernel with scalar prefetch);
        default: "tpu" when jax.default_backend() is tpu, else "gpu". Both run in interpret mode.

    Returns:
      `[b, h, e]` in q.dtype.

    The GPU kernel needs a power-of-two head dim and block_size >= 16 (Triton tile rules); in
    interpret mode any sizes work.
    """
    backend = kernel_backend()
    if impl == "auto":
        impl = "reference" if backend == "cpu" else "pallas"
    if impl == "reference":
        return paged_attention_reference(q, k_pages, v_pages, lengths, block_tables, scale=scale,
                                         k_scale=k_scale, v_scale=v_scale, window=window)
    if impl != "pallas":
        raise ValueError(f"impl must be 'auto', 'pallas' or 'reference', got {impl!r}")
    _check(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, window)
    if lowering is None:
        lowering = "tpu" if backend == "tpu" else "gpu"
    if lowering not in ("gpu", "tpu"):
        raise ValueError(f"lowering must be 'gpu' or 'tpu', got {lowering!r}")
    if interpret is None:
        interpret = backend == "cpu"
    return _paged_pallas(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, scale=float(scale),
                         window=int(window), lowering=lowering, interpret=interpret,
                         pages_per_chunk=int(pages_per_chunk), pages_per_block=int(pages_per_block))
