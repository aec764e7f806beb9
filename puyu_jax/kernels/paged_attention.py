"""Decode attention over a paged KV cache (float, int8 or int4 pages), with its plain-JAX twin.

Shapes (einsum letters): b sequences, h query heads, k kv heads, g = h // k query heads per kv
head (GQA), e head dim, n pages in the pool, s tokens per page (block_size), p pages per sequence
in the block table.

* `q [b, h, e]`: one decode query per sequence, the token at position `lengths[b] - 1` whose K/V
  are already written in the pages.
* `k_pages, v_pages [k, n, s, e]`: float (fp32 / bf16 / fp16) or int8. With int8 pages,
  `k_scale, v_scale [k, n, s]` float32 hold per-token-per-head scales (value = int8 * scale;
  the format is `puyu_jax.quant.kv`). With int4 pages (`[k, n, s / 2, e]` uint8: row r holds
  token r's codes in its low nibbles and token r + s / 2's in its high ones) `k_zero, v_zero
  [k, n, s]` hold the zero points too (value = code * scale + zero); the kernels unpack a page
  with a mask and a shift, dot the codes, and fold the zero points in as `zero * sum(q)` on the
  logits and `sum(p * zero)` on the output.
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

__all__ = ["paged_attention", "paged_attention_reference", "unpack_pages4"]

# Finite stand-in for -inf: exp(MASK - m) underflows to 0 without producing NaN from inf - inf.
_MASK = -0.7 * float(jnp.finfo(jnp.float32).max)


# --------------------------------------------------------------------------- shared checks


def _bits(k_pages) -> int:
    """16 for float pages, 8 for int8, 4 for packed int4 (uint8)."""
    if k_pages.dtype == jnp.uint8:
        return 4
    return 8 if jnp.issubdtype(k_pages.dtype, jnp.integer) else 16


def _check(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, window, k_zero=None, v_zero=None):
    b, h, e = q.shape
    kh, n, rows, e_k = k_pages.shape
    bits = _bits(k_pages)
    s = rows * (2 if bits == 4 else 1)  # int4: two tokens a row
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
    if (bits == 4) != (k_zero is not None) or (k_zero is None) != (v_zero is None):
        raise ValueError("int4 (uint8) pages need k_zero and v_zero; other pages take none")
    if bits == 4 and (k_zero.shape != (kh, n, s) or v_zero.shape != (kh, n, s)):
        raise ValueError(f"zero points must be {(kh, n, s)}, got {k_zero.shape} and {v_zero.shape}")
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    return quantized


def unpack_pages4(packed: jax.Array, dtype=jnp.uint8) -> jax.Array:
    """int4 pages as the kernels read them: `[..., s / 2, e]` bytes -> `[..., s, e]` codes in `dtype`
    (row r's low nibbles are token r, its high nibbles token r + s / 2; `quant.kv.pack_pages4`)."""
    b = packed.astype(jnp.int32)
    return jnp.concatenate([b & 15, b >> 4], axis=-2).astype(dtype)


def _page_range(length, block_size: int, window: int):
    """[first, end) pages of a sequence that hold at least one attended key."""
    # lax.div (truncation) rather than //: operands are >= 0, and floor division's sign fix-up
    # does not lower on every Mosaic target.
    end = lax.div(length + block_size - 1, block_size)
    first = lax.div(jnp.maximum(length - window, 0), block_size) if window else jnp.zeros_like(length)
    return first, end


# --------------------------------------------------------------------------- reference twin


def paged_attention_reference(q, k_pages, v_pages, lengths, block_tables, *, scale: float,
                              k_scale=None, v_scale=None, k_zero=None, v_zero=None, window: int = 0) -> jax.Array:
    """Plain-JAX twin of `paged_attention` (same contract; the CPU serving path).

    One gather of all `p * s` key slots per sequence, a masked fp32 softmax, two einsums.

    Returns:
      `[b, h, e]` in q.dtype; rows with length 0 are zeros.
    """
    quantized = _check(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, window, k_zero, v_zero)
    b, h, e = q.shape
    kh, n, s, _ = k_pages.shape
    s *= 2 if k_zero is not None else 1
    g = h // kh
    t = block_tables.shape[1] * s
    bt = jnp.clip(block_tables, 0, n - 1)
    # Gather in storage dtype (int8 moves 4x fewer bytes than its fp32 dequant), then widen.
    if k_zero is not None:
        # value = code * scale + zero (`quant.kv.dequantize_kv4`)
        keys = (unpack_pages4(k_pages[:, bt], jnp.float32) * k_scale[:, bt][..., None]
                + k_zero[:, bt][..., None]).reshape(kh, b, t, e)
        vals = (unpack_pages4(v_pages[:, bt], jnp.float32) * v_scale[:, bt][..., None]
                + v_zero[:, bt][..., None]).reshape(kh, b, t, e)
    else:
        keys = k_pages[:, bt].reshape(kh, b, t, e).astype(jnp.float32)
        vals = v_pages[:, bt].reshape(kh, b, t, e).astype(jnp.float32)
    if quantized and k_zero is None:
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


def _qk(q, k):
    """[G, e] x [t, e] -> [G, t] fp32 logits; a tensor-core dot needs t >= 16 (Triton), smaller
    tiles (int4 half pages) multiply and reduce."""
    if k.shape[0] >= 16:
        return lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return jnp.sum(q[:, None, :].astype(jnp.float32) * k[None, :, :].astype(jnp.float32), axis=2)


def _pv(p, v):
    """[G, t] weights x [t, e] values -> [G, e] fp32 (a dot when t >= 16, as `_qk`)."""
    if v.shape[0] >= 16:
        return jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return jnp.sum(p[:, :, None] * v[None, :, :].astype(jnp.float32), axis=1)


def _gpu_kernel(lengths_ref, bt_ref, q_ref, k_ref, v_ref, *refs, scale: float, window: int,
                pages_per_chunk: int, bits: int):
    """One program = (sequence, kv head, chunk of pages); all g query heads of the kv head at once.

    Refs: lengths `[1]`, bt `[p]`, q `[G, e]` (g padded to G), k/v `[n, s, e]` (the kv head's pool;
    int4: `[n, s/2, e]` bytes), scales `[n, s]` when quantized (int4: scales and zero points
    `[n, 2, s/2]`, one row per half page); outputs o `[G, e]` (unnormalized, fp32), m and l `[G]`.
    An int4 page is attended as its two halves of s/2 tokens (low nibbles, then high).
    """
    nmeta = {16: 0, 8: 2, 4: 4}[bits]
    meta, (o_ref, m_ref, l_ref) = refs[:nmeta], refs[nmeta:]
    chunk = pl.program_id(2)
    block_size = k_ref.shape[1] * (2 if bits == 4 else 1)
    length = lengths_ref[0]
    first, end = _page_range(length, block_size, window)
    lo = jnp.maximum(first, chunk * pages_per_chunk)
    hi = jnp.minimum(end, (chunk + 1) * pages_per_chunk)
    q = q_ref[...]
    gq, e = q.shape
    qsum = jnp.sum(q.astype(jnp.float32), axis=1) if bits == 4 else None  # q . (zero * 1) = zero * sum(q)

    def update(carry, k, v, pos, ks=None, vs=None, kz=None, vz=None):
        """One online-softmax step over keys k / values v [t, e] at positions pos [1, t]."""
        o, oz, m, l = carry
        logits = _qk(q, k)
        if ks is not None:
            logits = logits * ks[None, :]  # codes -> q.dtype is exact; scales apply after the dot
        if kz is not None:
            logits = logits + qsum[:, None] * kz[None, :]
        logits = logits * scale
        valid = pos < length
        if window:
            valid &= pos >= length - window
        logits = jnp.where(valid, logits, _MASK)
        m_new = jnp.maximum(m, jnp.max(logits, axis=1))
        corr = jnp.exp(m - m_new)
        p = jnp.exp(logits - m_new[:, None])
        l = l * corr + jnp.sum(p, axis=1)
        if vz is not None:
            oz = oz * corr + jnp.sum(p * vz[None, :], axis=1)
        if vs is not None:
            p = p * vs[None, :]  # value scales ride on the weights of the p @ v dot
        return o * corr[:, None] + _pv(p, v), oz, m_new, l

    def body(i, carry):
        page = bt_ref[i]
        if bits == 4:
            half = block_size // 2
            kb, vb = k_ref[page].astype(jnp.int32), v_ref[page].astype(jnp.int32)  # [s/2, e] bytes
            for j in range(2):
                pos = i * block_size + j * half + lax.broadcasted_iota(jnp.int32, (1, half), 1)
                k = ((kb >> (4 * j)) & 15).astype(q.dtype)
                v = ((vb >> (4 * j)) & 15).astype(q.dtype)
                carry = update(carry, k, v, pos, *(r[page, j] for r in meta))
            return carry
        pos = i * block_size + lax.broadcasted_iota(jnp.int32, (1, block_size), 1)
        k, v = k_ref[page].astype(q.dtype), v_ref[page].astype(q.dtype)  # int8 -> q.dtype is exact
        return update(carry, k, v, pos, *(r[page] for r in meta))

    init = (jnp.zeros((gq, e), jnp.float32), jnp.zeros((gq,), jnp.float32), jnp.full((gq,), _MASK, jnp.float32),
            jnp.zeros((gq,), jnp.float32))
    # Every page in [lo, hi) holds at least one attended key, so no fully masked page reaches the
    # online softmax; an empty range leaves (0, MASK, 0), which the combine step turns into zeros.
    o, oz, m, l = lax.fori_loop(lo, hi, body, init)
    o_ref[...] = o + oz[:, None] if bits == 4 else o
    m_ref[...] = m
    l_ref[...] = l


def _meta_args(bits, k_scale, v_scale, k_zero, v_zero) -> list:
    """The kernels' per-token float arguments: none, (k_scale, v_scale), or those and the zero points."""
    if bits == 16:
        return []
    out = [k_scale, v_scale] + ([k_zero, v_zero] if bits == 4 else [])
    return [x.astype(jnp.float32) for x in out]


def _paged_gpu(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, k_zero, v_zero, *, scale, window,
               pages_per_chunk, interpret):
    b, h, e = q.shape
    kh, n, rows, _ = k_pages.shape
    bits = _bits(k_pages)
    g = h // kh
    p = block_tables.shape[1]
    # Triton tiles need power-of-two sizes and tensor-core dots at least 16 rows.
    gq = max(16, pow2_at_least(g))
    qg = q.reshape(b, kh, g, e)
    if gq != g:
        qg = jnp.pad(qg, ((0, 0), (0, 0), (0, gq - g), (0, 0)))
    ppc = max(1, min(pages_per_chunk, p))
    chunks = -(-p // ppc)
    meta = _meta_args(bits, k_scale, v_scale, k_zero, v_zero)
    if bits == 4:  # one row of scales per half page, indexed [page, half] in the kernel
        meta = [x.reshape(kh, n, 2, rows) for x in meta]
    meta_block = (None,) + meta[0].shape[1:] if meta else None
    meta_index = (lambda bi, ki, c: (ki,) + (0,) * (len(meta_block) - 1)) if meta else None
    in_specs = [
        pl.BlockSpec((1,), lambda bi, ki, c: (bi,)),
        pl.BlockSpec((None, p), lambda bi, ki, c: (bi, 0)),
        pl.BlockSpec((None, None, gq, e), lambda bi, ki, c: (bi, ki, 0, 0)),
        pl.BlockSpec((None, n, rows, e), lambda bi, ki, c: (ki, 0, 0, 0)),
        pl.BlockSpec((None, n, rows, e), lambda bi, ki, c: (ki, 0, 0, 0)),
        *[pl.BlockSpec(meta_block, meta_index)] * len(meta),
    ]
    args = [lengths.astype(jnp.int32), jnp.clip(block_tables, 0, n - 1).astype(jnp.int32), qg, k_pages, v_pages,
            *meta]
    from jax.experimental.pallas import triton as pltriton

    o, m, l = pl.pallas_call(
        functools.partial(_gpu_kernel, scale=scale, window=window, pages_per_chunk=ppc, bits=bits),
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


def _tpu_kernel(lengths_ref, bt_ref, q_ref, *refs, scale: float, window: int, bits: int, pages_per_block: int):
    """Grid (sequence, kv head, block of pages); the block axis is sequential and accumulates in VMEM.

    Refs: lengths `[b]` and flat block tables `[b * p]` in SMEM (scalar prefetch); q `[g, e]`;
    `pages_per_block` K pages then as many V pages, each `[s, e]` (one DMA each, picked by its
    index map; int4: `[s/2, e]` bytes, unpacked into `[s, e]` codes); when quantized, the block's
    K and V scales (int4: and zero points) `[k, pages_per_block * s]` (all kv heads: a lane-dense
    tile); o `[g, e]`; scratch m, l `[g, 1]`, acc `[g, e]` fp32 (int4: and the zero-point sum
    `[g, 1]`). The block's pages are stacked into one `[pages_per_block * s, e]` operand: one q.k
    and one p.v dot and one online-softmax update per block.
    """
    ppb = pages_per_block
    k_refs, v_refs, refs = refs[:ppb], refs[ppb:2 * ppb], refs[2 * ppb:]
    nmeta = {16: 0, 8: 2, 4: 4}[bits]
    meta, (o_ref, m_sc, l_sc, acc_sc, *rest) = refs[:nmeta], refs[nmeta:]
    bi, ki, i = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    block_size = k_refs[0].shape[0] * (2 if bits == 4 else 1)
    length = lengths_ref[bi]
    first, end = _page_range(length, block_size, window)

    @pl.when(i == 0)
    def _init():
        m_sc[...] = jnp.full(m_sc.shape, _MASK, jnp.float32)
        l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
        for acc in (acc_sc, *rest):
            acc[...] = jnp.zeros(acc.shape, jnp.float32)

    def page(r, dtype):
        if bits == 4:  # [s/2, e] bytes -> [s, e] codes: low nibbles are the first s/2 tokens
            b = r[...].astype(jnp.int32)
            return jnp.concatenate([b & 15, b >> 4], axis=0).astype(dtype)
        return r[...].astype(dtype)  # int8 -> q.dtype is exact

    def stacked(page_refs, dtype):
        return jnp.concatenate([page(r, dtype) for r in page_refs], axis=0) if ppb > 1 else page(page_refs[0], dtype)

    # Blocks holding no attended page are skipped; inside a block, pages past the end (or before
    # the window) repeat a neighbouring page's DMA and are masked out by position.
    @pl.when((i * ppb < end) & ((i + 1) * ppb > first))
    def _step():
        q = q_ref[...]
        k, v = stacked(k_refs, q.dtype), stacked(v_refs, q.dtype)
        logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
        if bits != 16:  # the scales ride on the logits and on the p.v weights
            logits = logits * meta[0][pl.ds(ki, 1), :]
        if bits == 4:  # q . zero = zero * sum(q)
            logits = logits + jnp.sum(q.astype(jnp.float32), axis=1, keepdims=True) * meta[2][pl.ds(ki, 1), :]
        logits = logits * scale
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
        if bits == 4:
            rest[0][...] = rest[0][...] * corr + jnp.sum(p * meta[3][pl.ds(ki, 1), :], axis=1, keepdims=True)
        if bits != 16:
            p = p * meta[1][pl.ds(ki, 1), :]
        acc_sc[...] = acc_sc[...] * corr + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
        m_sc[...] = m_new

    @pl.when(i == pl.num_programs(2) - 1)
    def _finish():
        denom = jnp.maximum(l_sc[...], jnp.finfo(jnp.float32).tiny)
        acc = acc_sc[...] + rest[0][...] if bits == 4 else acc_sc[...]
        o_ref[...] = (acc / denom).astype(o_ref.dtype)


def _cost_estimate(q, k_pages, block_tables, bits: int) -> pl.CostEstimate:
    """What a decode call moves and computes when every block-table entry is attended (the
    upper bound; XLA otherwise sees an opaque kernel reading whole page pools)."""
    b, h, e = q.shape
    kh, _, rows, _ = k_pages.shape
    keys = b * kh * block_tables.shape[1] * rows * (2 if bits == 4 else 1)
    elem_bytes, meta_bytes = {16: (k_pages.dtype.itemsize, 0), 8: (1, 4), 4: (0.5, 8)}[bits]
    kv_bytes = int(2 * keys * (e * elem_bytes + meta_bytes))
    io_bytes = 2 * q.size * q.dtype.itemsize + block_tables.size * 4
    return pl.CostEstimate(flops=4 * keys * (h // kh) * e, transcendentals=keys * (h // kh),
                           bytes_accessed=kv_bytes + io_bytes)


def _paged_tpu(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, k_zero, v_zero, *, scale, window,
               interpret, pages_per_block):
    from jax.experimental.pallas import tpu as pltpu

    b, h, e = q.shape
    kh, n, rows, _ = k_pages.shape
    bits = _bits(k_pages)
    s = rows * (2 if bits == 4 else 1)  # tokens a page
    g = h // kh
    p = block_tables.shape[1]
    quantized = bits != 16
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
        return pl.BlockSpec((None, None, rows, e), lambda bi, ki, i, L, T: (ki, page_of(bi, i * ppb + j, L, T), 0, 0))

    q_spec = pl.BlockSpec((None, None, g, e), lambda bi, ki, i, L, T: (bi, ki, 0, 0))
    in_specs = [q_spec] + [page_spec(j) for j in range(ppb)] * 2
    args = [q.reshape(b, kh, g, e)] + [k_pages] * ppb + [v_pages] * ppb
    meta = _meta_args(bits, k_scale, v_scale, k_zero, v_zero)
    if meta:
        # The scales (and zero points) of each sequence's table, gathered outside the kernel
        # ([b, k, p * s]: only what the kernel reads): a page's scales are a 16-float row of the
        # pool, too narrow a tile for Mosaic, and reshaping the pool would copy all of it into a
        # padded layout per call.
        def table_meta(x):
            x = x[:, bt].transpose(1, 0, 2, 3).reshape(b, kh, p * s)
            return jnp.pad(x, ((0, 0), (0, 0), (0, (blocks * ppb - p) * s)))

        in_specs += [pl.BlockSpec((None, kh, ppb * s), lambda bi, ki, i, L, T: (bi, 0, i))] * len(meta)
        args += [table_meta(x) for x in meta]
    scratch = [pltpu.VMEM((g, 1), jnp.float32), pltpu.VMEM((g, 1), jnp.float32), pltpu.VMEM((g, e), jnp.float32)]
    if bits == 4:
        scratch.append(pltpu.VMEM((g, 1), jnp.float32))  # sum of p * zero (unnormalized)
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=2,
        grid=(b, kh, blocks),
        in_specs=in_specs,
        out_specs=q_spec,
        scratch_shapes=scratch,
    )
    out = pl.pallas_call(
        functools.partial(_tpu_kernel, scale=scale, window=window, bits=bits, pages_per_block=ppb),
        grid_spec=grid_spec,
        out_shape=out_struct((b, kh, g, e), q.dtype, lengths, block_tables, *args),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
        cost_estimate=_cost_estimate(q, k_pages, block_tables, bits),
        interpret=interpret,
        name="paged_attention_tpu",
    )(lengths.astype(jnp.int32), bt.reshape(-1), *args)
    return out.reshape(b, h, e)


# --------------------------------------------------------------------------- entry point


@functools.partial(jax.jit, static_argnames=("scale", "window", "lowering", "interpret", "pages_per_chunk",
                                             "pages_per_block"))
def _paged_pallas(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, k_zero, v_zero, *, scale, window,
                  lowering, interpret, pages_per_chunk, pages_per_block=16):
    if lowering == "tpu":
        return _paged_tpu(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, k_zero, v_zero, scale=scale,
                          window=window, interpret=interpret, pages_per_block=pages_per_block)
    return _paged_gpu(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, k_zero, v_zero, scale=scale,
                      window=window, pages_per_chunk=pages_per_chunk, interpret=interpret)


def paged_attention(q, k_pages, v_pages, lengths, block_tables, *, scale: float, k_scale=None, v_scale=None,
                    k_zero=None, v_zero=None, window: int = 0, impl: str = "auto", interpret: bool | None = None,
                    pages_per_chunk: int = 32, pages_per_block: int = 16, lowering: str | None = None) -> jax.Array:
    """Paged decode attention (GQA, optional sliding window, optional int8 / int4 pages).

    Args:
      q: `[b, h, e]` queries (fp32 / bf16 / fp16), h = k * g.
      k_pages, v_pages: `[k, n, s, e]` page pools, float or int8; int4: `[k, n, s / 2, e]` uint8
        (`puyu_jax.quant.kv.pack_pages4`).
      lengths: `[b]` int32 valid keys per sequence (0 = padding row -> zeros).
      block_tables: `[b, p]` int32 page of each block of each sequence.
      scale: softmax scale applied to q.k (usually e ** -0.5).
      k_scale, v_scale: `[k, n, s]` float32 per-token scales, only with int8 / int4 pages.
      k_zero, v_zero: `[k, n, s]` float32 per-token zero points, only with int4 pages.
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
                                         k_scale=k_scale, v_scale=v_scale, k_zero=k_zero, v_zero=v_zero,
                                         window=window)
    if impl != "pallas":
        raise ValueError(f"impl must be 'auto', 'pallas' or 'reference', got {impl!r}")
    _check(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, window, k_zero, v_zero)
    if lowering is None:
        lowering = "tpu" if backend == "tpu" else "gpu"
    if lowering not in ("gpu", "tpu"):
        raise ValueError(f"lowering must be 'gpu' or 'tpu', got {lowering!r}")
    if interpret is None:
        interpret = backend == "cpu"
    return _paged_pallas(q, k_pages, v_pages, lengths, block_tables, k_scale, v_scale, k_zero, v_zero,
                         scale=float(scale), window=int(window), lowering=lowering, interpret=interpret,
                         pages_per_chunk=int(pages_per_chunk), pages_per_block=int(pages_per_block))
