"""Weight-only int4 / int8 matmuls: `y = x @ dequant(W)` with W stored as quantized groups.

Layout (shared with the quantizers, the GGUF loader and checkpoints):

* A float weight `W [K, N]` (used as `y = x @ W`) is cut along K into groups of `group_size`
  rows (`K % group_size == 0`; a power of two from 32 up for GGUF blocks, any even size
  otherwise). Each (group, column) has a float `scale` (fp32 / bf16 / fp16) and, by kind:

  | kind  | stored                         | dequant                 | source                 |
  |-------|--------------------------------|-------------------------|------------------------|
  | zero  | `zeros` float, integers 0..15  | `(q - zero) * scale`    | RTN / AWQ (llm-awq)    |
  | min   | `mins` float                   | `q * scale + min`       | GGUF Q4_1 (`d*q + m`)  |
  | sym   | nothing                        | `(q - 8) * scale`       | GGUF Q4_0              |

  with `scales`, `zeros`, `mins` all `[K // group_size, N]`.
* int4 codes `q` in 0..15 are packed two per byte along K: `qweight: uint8 [K // 2, N]`,
  low nibble = `q[2i, n]`, high nibble = `q[2i+1, n]`.
* int8 weights (GGUF Q8_0, W8A16): `qweight: int8 [K, N]`, symmetric, `W ~= q * scale`.
* W8A8 (SmoothQuant): int8 weights with one scale per output column (`scales [1, N]`) and
  activations quantized per row at run time (`x ~= xq * x_scale`, symmetric int8); the product
  is an int8 x int8 -> int32 matmul, `y = acc * x_scale * scale`.

Shapes use einsum letters: m rows of activations, K input features, N output features,
G = K // group_size groups.

`int4_matmul` / `int8_matmul` are the Pallas kernels (Triton on GPU, Mosaic on TPU, interpret
mode on CPU for tests); `int4_matmul_reference` / `int8_matmul_reference` are their plain-JAX
twins and the CPU serving path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from puyu_jax.kernels.target import kernel_backend, out_struct, pow2_at_least

__all__ = ["pack_int4", "unpack_int4", "int4_matmul", "int4_matmul_reference", "int8_matmul", "int8_matmul_reference",
           "offset_kind", "quantize_rows", "w8a8_matmul", "w8a8_matmul_reference"]

KINDS = ("zero", "min", "sym")


def pack_int4(q: jax.Array) -> jax.Array:
    """Packs 4-bit values two per byte along K.

    Args:
      q: `[K, N]` integer values in 0..15 (K even).

    Returns:
      `[K // 2, N]` uint8; row i holds `q[2i]` in the low nibble and `q[2i + 1]` in the high one.
    """
    if q.shape[0] % 2:
        raise ValueError(f"pack_int4 needs an even number of rows, got shape {q.shape}")
    q = q.astype(jnp.uint8)
    return (q[0::2] & 0xF) | ((q[1::2] & 0xF) << 4)


def unpack_int4(packed: jax.Array) -> jax.Array:
    """Inverse of `pack_int4`: `[K // 2, N]` uint8 -> `[K, N]` uint8 with values 0..15."""
    packed = packed.astype(jnp.uint8)
    low, high = packed & 0xF, packed >> 4
    # Interleave rows back: (K/2, 2, N) -> (K, N) puts low at 2i and high at 2i+1.
    return jnp.stack([low, high], axis=1).reshape(2 * packed.shape[0], *packed.shape[1:])


def offset_kind(zeros, mins) -> str:
    """The int4 kind of (zeros, mins): "zero", "min" or "sym" (neither); both is an error."""
    if zeros is not None and mins is not None:
        raise ValueError("pass zeros (w = (q - zero) * scale) or mins (w = q * scale + min), not both")
    return "zero" if zeros is not None else "min" if mins is not None else "sym"


def _check(x, qweight, scales, offsets, group_size, *, bits=4):
    m, k = x.shape
    kq, n = qweight.shape
    want = jnp.uint8 if bits == 4 else jnp.int8
    if qweight.dtype != want:
        raise ValueError(f"qweight must be {jnp.dtype(want).name} for int{bits}, got {qweight.dtype}")
    rows = 2 * kq if bits == 4 else kq
    if rows != k:
        raise ValueError(f"x has K={k} but qweight holds {rows} rows")
    if group_size % 2 or k % group_size:
        raise ValueError(f"group_size={group_size} must be even and divide K={k}")
    g = k // group_size
    if scales.shape != (g, n) or (offsets is not None and offsets.shape != (g, n)):
        shapes = scales.shape if offsets is None else (scales.shape, offsets.shape)
        raise ValueError(f"scales/zeros/mins must be {(g, n)}, got {shapes}")
    return m, k, n


def _dequant(q, s, o, kind: str):
    """float32 weight from float32 codes `q`, scales `s` and offsets `o` (broadcasting)."""
    if kind == "zero":
        return (q - o) * s
    if kind == "min":
        return q * s + o
    return (q - 8.0) * s


def _dequant_halves(qweight, scales, offsets, group_size, dtype, kind):
    """`[K/2, N]` packed -> (even rows, odd rows) of the dequantized weight, each `[K/2, N]`.

    Packed row i holds W rows 2i and 2i+1, both in group `i // (group_size / 2)`, so the
    per-group scale/offset broadcast over half-groups and the rows never need interleaving.
    """
    k2, n = qweight.shape
    half = group_size // 2
    s = scales.astype(jnp.float32)[:, None, :]
    o = None if offsets is None else offsets.astype(jnp.float32)[:, None, :]
    low = (qweight & 0xF).astype(jnp.float32).reshape(k2 // half, half, n)
    high = (qweight >> 4).astype(jnp.float32).reshape(k2 // half, half, n)
    w_even = _dequant(low, s, o, kind).astype(dtype).reshape(k2, n)
    w_odd = _dequant(high, s, o, kind).astype(dtype).reshape(k2, n)
    return w_even, w_odd


def int4_matmul_reference(x: jax.Array, qweight: jax.Array, scales: jax.Array, zeros: jax.Array | None = None, *,
                          group_size: int = 128, mins: jax.Array | None = None) -> jax.Array:
    """Plain-JAX twin of `int4_matmul`: dequantize the whole weight, then one matmul.

    Args:
      x: `[m, K]` activations (fp32 / bf16 / fp16).
      qweight: `[K // 2, N]` uint8, packed as `pack_int4`.
      scales: `[G, N]` float, G = K // group_size.
      zeros: `[G, N]` float with integer values 0..15 (kind "zero"), or None.
      group_size: rows of K per quantization group.
      mins: `[G, N]` float minimums (kind "min": w = q * scale + min), or None. With neither
        zeros nor mins the weight is symmetric: w = (q - 8) * scale.

    Returns:
      `[m, N]` in x.dtype, accumulated in fp32.
    """
    kind = offset_kind(zeros, mins)
    offsets = zeros if kind == "zero" else mins
    _check(x, qweight, scales, offsets, group_size)
    w_even, w_odd = _dequant_halves(qweight, scales, offsets, group_size, x.dtype, kind)
    # x[:, 2i] meets W row 2i (low nibbles), x[:, 2i+1] meets row 2i+1 (high nibbles); two
    # half-size dots avoid materializing the interleaved [K, N] weight.
    y = jnp.dot(x[:, 0::2], w_even, preferred_element_type=jnp.float32)
    y = y + jnp.dot(x[:, 1::2], w_odd, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def int8_matmul_reference(x: jax.Array, qweight: jax.Array, scales: jax.Array, *, group_size: int) -> jax.Array:
    """Plain-JAX twin of `int8_matmul`: `x @ (q * scale)` with per-group scales.

    Args:
      x: `[m, K]` activations.
      qweight: `[K, N]` int8.
      scales: `[G, N]` float, G = K // group_size (group_size = K: per output channel).
      group_size: rows of K per group.

    Returns:
      `[m, N]` in x.dtype, accumulated in fp32.
    """
    _check(x, qweight, scales, None, group_size, bits=8)
    k, n = qweight.shape
    w = qweight.astype(jnp.float32).reshape(k // group_size, group_size, n) * scales.astype(jnp.float32)[:, None, :]
    return jnp.dot(x, w.reshape(k, n).astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)


def _int4_kernel(xe_ref, xo_ref, qw_ref, s_ref, *refs, group_size: int, groups_per_step: int, kind: str,
                 groups_per_load: int = 1):
    """One (m tile, n tile) program; loops over K a `groups_per_step` groups at a time.

    Refs: xe/xo `[bm, K/2]` (even / odd columns of x), qw `[K/2, bn]`, s (and the zeros or
    mins unless kind is "sym") `[G, bn]`, o `[bm, bn]`. Each load of x takes `groups_per_load`
    consecutive groups (`half * groups_per_load` columns): Mosaic needs lane slices at multiples
    of 128, so on TPU groups smaller than 256 rows are loaded and dequantized several at a time
    and their weights stacked along sublanes.
    """
    o_ref = refs[-1]
    off_ref = refs[0] if kind != "sym" else None
    bm, bn = o_ref.shape
    half = group_size // 2
    width = half * groups_per_load
    loads = groups_per_step // groups_per_load
    n_groups = s_ref.shape[0]
    dtype = xe_ref.dtype

    def step(t, acc):
        # Static inner loops: one scale row per group keeps every load a plain 2-D tile
        # (no in-kernel reshape), which both Triton and Mosaic lower directly.
        for j in range(loads):
            c = t * loads + j
            cols = pl.ds(pl.multiple_of(c * width, width), width)
            qw = qw_ref[cols, :].astype(jnp.int32)  # [width, bn]; int32: uint8 ALU ops are spotty
            evens, odds = [], []
            for u in range(groups_per_load):
                gi = c * groups_per_load + u
                s = s_ref[pl.ds(gi, 1), :].astype(jnp.float32)  # [1, bn]
                o = None if off_ref is None else off_ref[pl.ds(gi, 1), :].astype(jnp.float32)
                q = qw if groups_per_load == 1 else qw[u * half:(u + 1) * half]
                evens.append(_dequant((q & 0xF).astype(jnp.float32), s, o, kind).astype(dtype))
                odds.append(_dequant((q >> 4).astype(jnp.float32), s, o, kind).astype(dtype))
            w_even = evens[0] if groups_per_load == 1 else jnp.concatenate(evens, axis=0)
            w_odd = odds[0] if groups_per_load == 1 else jnp.concatenate(odds, axis=0)
            acc += jnp.dot(xe_ref[:, cols], w_even, preferred_element_type=jnp.float32)
            acc += jnp.dot(xo_ref[:, cols], w_odd, preferred_element_type=jnp.float32)
        return acc

    acc = jax.lax.fori_loop(0, n_groups // groups_per_step, step, jnp.zeros((bm, bn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def _int8_kernel(x_ref, qw_ref, s_ref, o_ref, *, group_size: int, groups_per_step: int):
    """One (m tile, n tile) program of `int8_matmul`. Refs: x `[bm, K]`, qw `[K, bn]`, s `[G, bn]`."""
    bm, bn = o_ref.shape
    n_groups = s_ref.shape[0]
    dtype = x_ref.dtype

    def step(t, acc):
        for j in range(groups_per_step):
            gi = t * groups_per_step + j
            rows = pl.ds(pl.multiple_of(gi * group_size, group_size), group_size)
            w = qw_ref[rows, :].astype(jnp.float32) * s_ref[pl.ds(gi, 1), :].astype(jnp.float32)
            acc += jnp.dot(x_ref[:, rows], w.astype(dtype), preferred_element_type=jnp.float32)
        return acc

    acc = jax.lax.fori_loop(0, n_groups // groups_per_step, step, jnp.zeros((bm, bn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)




def _tiles(x, n, group_size, block_m, block_n, block_k, per_load: int = 1):
    """(padded x, bm, bn, groups per K step) for an `[m, K] x [K, N]` call; a K step holds a
    whole number of `per_load` groups."""
    m, k = x.shape
    # Decode has m of 1..32: shrink the m tile to the smallest power of two that holds m
    # (16 at least, the smallest tensor-core / MXU-friendly tile) and pad rows to a whole tile.
    bm = max(16, min(block_m, pow2_at_least(m)))
    m_pad = -(-m // bm) * bm
    if m_pad != m:
        x = jnp.pad(x, ((0, m_pad - m), (0, 0)))
    bn = min(block_n, n)
    if n % bn:
        raise ValueError(f"N={n} must be a multiple of block_n={bn}")
    if block_k % group_size:
        raise ValueError(f"block_k={block_k} must be a multiple of group_size={group_size}")
    groups = k // group_size
    per_step = max(per_load, min(block_k // group_size, groups) // per_load * per_load)
    while groups % per_step:
        per_step -= per_load
    return x, bm, bn, per_step


def _tpu_groups_per_load(k: int, group_size: int) -> int:
    """Mosaic slices lanes at multiples of 128: on TPU, load x for 128 // (group_size / 2) groups at once."""
    half, groups = group_size // 2, k // group_size
    if half % 128 == 0:
        return 1
    per_load = min(128 // half, groups)  # a K narrower than one load is loaded whole
    if 128 % half or groups % per_load:
        raise ValueError(f"TPU int4_matmul: group_size={group_size} must divide 256 or be a multiple of 256, "
                         f"and K={k} split into whole 256-row loads")
    return per_load


def _compiler_params(backend):
    if backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
    from jax.experimental.pallas import triton as pltriton

    # Passing Triton params selects the Triton lowering on GPU (not Mosaic GPU).
    return pltriton.CompilerParams(num_warps=4, num_stages=2)


@functools.partial(jax.jit, static_argnames=("group_size", "kind", "backend", "interpret", "block_m", "block_n",
                                             "block_k"))
def _int4_pallas(x, qweight, scales, offsets, *, group_size, kind="zero", backend, interpret, block_m, block_n,
                 block_k):
    m, k, n = x.shape[0], x.shape[1], qweight.shape[1]
    per_load = _tpu_groups_per_load(k, group_size) if backend == "tpu" else 1
    x, bm, bn, per_step = _tiles(x, n, group_size, block_m, block_n, block_k, per_load)
    m_pad, groups = x.shape[0], k // group_size
    # Splitting x into even / odd columns here (x is tiny next to W) lets the kernel pair them
    # with the low / high nibbles without strided loads.
    xe, xo = x[:, 0::2], x[:, 1::2]
    kernel = functools.partial(_int4_kernel, group_size=group_size, groups_per_step=per_step, kind=kind,
                               groups_per_load=per_load)
    inputs = [xe, xo, qweight, scales] + ([offsets] if kind != "sym" else [])
    in_specs = [
        pl.BlockSpec((bm, k // 2), lambda i, j: (i, 0)),
        pl.BlockSpec((bm, k // 2), lambda i, j: (i, 0)),
        pl.BlockSpec((k // 2, bn), lambda i, j: (0, j)),
    ] + [pl.BlockSpec((groups, bn), lambda i, j: (0, j))] * (len(inputs) - 3)
    y = pl.pallas_call(
        kernel,
        out_shape=out_struct((m_pad, n), x.dtype, *inputs),
        grid=(m_pad // bm, n // bn),
        in_specs=in_specs,
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=_compiler_params(backend),
        # XLA sees an opaque kernel otherwise (no FLOPs, no weight traffic in its cost analysis).
        cost_estimate=pl.CostEstimate(
            flops=2 * m_pad * k * n, transcendentals=0,
            bytes_accessed=qweight.size + sum(a.size for a in inputs[3:]) * scales.dtype.itemsize
            + (m_pad * k + m_pad * n) * x.dtype.itemsize),
        interpret=interpret,
        name="int4_matmul",
    )(*inputs)
    return y[:m]


@functools.partial(jax.jit, static_argnames=("group_size", "backend", "interpret", "block_m", "block_n", "block_k"))
def _int8_pallas(x, qweight, scales, *, group_size, backend, interpret, block_m, block_n, block_k):
    m, k, n = x.shape[0], x.shape[1], qweight.shape[1]
    x, bm, bn, per_step = _tiles(x, n, group_size, block_m, block_n, block_k)
    groups = k // group_size
    kernel = functools.partial(_int8_kernel, group_size=group_size, groups_per_step=per_step)
    y = pl.pallas_call(
        kernel,
        out_shape=out_struct((x.shape[0], n), x.dtype, x, qweight, scales),
        grid=(x.shape[0] // bm, n // bn),
        in_specs=[
            pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
            pl.BlockSpec((k, bn), lambda i, j: (0, j)),
            pl.BlockSpec((groups, bn), lambda i, j: (0, j)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=_compiler_params(backend),
        interpret=interpret,
        name="int8_matmul",
    )(x, qweight, scales)
    return y[:m]


def _resolve_impl(impl: str, interpret: bool | None) -> tuple[str, str, bool]:
    backend = kernel_backend()
    if impl == "auto":
        impl = "reference" if backend == "cpu" else "pallas"
    if impl not in ("pallas", "reference"):
        raise ValueError(f"impl must be 'auto', 'pallas' or 'reference', got {impl!r}")
    return impl, "tpu" if backend == "tpu" else "gpu", backend == "cpu" if interpret is None else interpret


def int4_matmul(x: jax.Array, qweight: jax.Array, scales: jax.Array, zeros: jax.Array | None = None, *,
                group_size: int = 128, mins: jax.Array | None = None, impl: str = "auto",
                interpret: bool | None = None, block_m: int = 32, block_n: int = 128, block_k: int = 256) -> jax.Array:
    """`x @ dequant(qweight, scales, zeros | mins)` with the dequantization fused into the kernel.

    Args:
      x: `[m, K]` activations (fp32 / bf16 / fp16); any m (rows are padded to the m tile).
      qweight: `[K // 2, N]` uint8 packed as `pack_int4`.
      scales: `[G, N]` float, G = K // group_size.
      zeros: `[G, N]` float with integer values 0..15 (w = (q - zero) * scale), or None.
      group_size: rows of K per quantization group (even, divides K).
      mins: `[G, N]` float (w = q * scale + min, GGUF Q4_1), or None; with neither zeros nor
        mins, w = (q - 8) * scale (GGUF Q4_0).
      impl: "auto" (Pallas on GPU / TPU, the reference on CPU), "pallas" (the kernel; interpret
        mode on CPU) or "reference".
      interpret: run the kernel in Pallas interpret mode; default: only on CPU.
      block_m, block_n, block_k: tile sizes; the grid is (m tiles, N / block_n) and each program
        loops over K in steps of block_k (a multiple of group_size). N must divide by block_n
        (or be smaller); block_n a power of two for the Triton lowering.

    Returns:
      `[m, N]` in x.dtype; products accumulated in fp32.
    """
    impl, backend, interpret = _resolve_impl(impl, interpret)
    if impl == "reference":
        return int4_matmul_reference(x, qweight, scales, zeros, group_size=group_size, mins=mins)
    kind = offset_kind(zeros, mins)
    offsets = zeros if kind == "zero" else mins
    _check(x, qweight, scales, offsets, group_size)
    return _int4_pallas(x, qweight, scales, offsets, group_size=group_size, kind=kind, backend=backend,
                        interpret=interpret, block_m=block_m, block_n=block_n, block_k=block_k)


def int8_matmul(x: jax.Array, qweight: jax.Array, scales: jax.Array, *, group_size: int, impl: str = "auto",
                interpret: bool | None = None, block_m: int = 32, block_n: int = 128, block_k: int = 256) -> jax.Array:
    """`x @ (qweight * scales)` for int8 weights (GGUF Q8_0 blocks; W8A16 with group_size = K).

    Args:
      x: `[m, K]` activations.
      qweight: `[K, N]` int8.
      scales: `[G, N]` float, G = K // group_size.
      group_size: rows of K per group (divides K).
      impl, interpret, block_m, block_n, block_k: as `int4_matmul` (block_k is rounded up to
        one group when the group is larger).

    Returns:
      `[m, N]` in x.dtype; products accumulated in fp32.
    """
    impl, backend, interpret = _resolve_impl(impl, interpret)
    if impl == "reference":
        return int8_matmul_reference(x, qweight, scales, group_size=group_size)
    _check(x, qweight, scales, None, group_size, bits=8)
    block_k = max(block_k // group_size, 1) * group_size
    return _int8_pallas(x, qweight, scales, group_size=group_size, backend=backend, interpret=interpret,
                        block_m=block_m, block_n=block_n, block_k=block_k)


def quantize_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-row (per-token) symmetric int8: (xq int8 [m, K], x_scale float32 [m, 1]), x ~= xq * x_scale."""
    xf = x.astype(jnp.float32)
    scale = jnp.maximum(jnp.max(jnp.abs(xf), axis=1, keepdims=True), 1e-8) / 127
    return jnp.clip(jnp.round(xf / scale), -127, 127).astype(jnp.int8), scale


def w8a8_matmul_reference(x: jax.Array, qweight: jax.Array, scales: jax.Array) -> jax.Array:
    """Plain-JAX twin of `w8a8_matmul`: per-token int8 activations, int8 x int8 -> int32 dot.

    Args:
      x: `[m, K]` float activations (quantized per row here).
      qweight: `[K, N]` int8.
      scales: `[1, N]` float, one per output column.

    Returns:
      `[m, N]` in x.dtype.
    """
    _check(x, qweight, scales, None, x.shape[1], bits=8)
    xq, xs = quantize_rows(x)
    acc = jax.lax.dot(xq, qweight, preferred_element_type=jnp.int32)
    return (acc.astype(jnp.float32) * xs * scales.astype(jnp.float32)).astype(x.dtype)


def _w8a8_kernel(xq_ref, xs_ref, qw_ref, s_ref, o_ref):
    """One (m tile, n tile): xq `[bm, K]` int8, xs `[bm, 1]`, qw `[K, bn]` int8, s `[1, bn]`."""
    acc = jnp.dot(xq_ref[...], qw_ref[...], preferred_element_type=jnp.int32)
    o_ref[...] = (acc.astype(jnp.float32) * xs_ref[...] * s_ref[...].astype(jnp.float32)).astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("backend", "interpret", "block_m", "block_n"))
def _w8a8_pallas(x, qweight, scales, *, backend, interpret, block_m, block_n):
    m, k, n = x.shape[0], x.shape[1], qweight.shape[1]
    x, bm, bn, _ = _tiles(x, n, k, block_m, block_n, k)
    xq, xs = quantize_rows(x)
    y = pl.pallas_call(
        _w8a8_kernel,
        out_shape=out_struct((x.shape[0], n), x.dtype, xq, xs, qweight, scales),
        grid=(x.shape[0] // bm, n // bn),
        in_specs=[
            pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
            pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
            pl.BlockSpec((k, bn), lambda i, j: (0, j)),
            pl.BlockSpec((1, bn), lambda i, j: (0, j)),
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=_compiler_params(backend),
        interpret=interpret,
        name="w8a8_matmul",
    )(xq, xs, qweight, scales)
    return y[:m]


def w8a8_matmul(x: jax.Array, qweight: jax.Array, scales: jax.Array, *, impl: str = "auto",
                interpret: bool | None = None, block_m: int = 32, block_n: int = 128) -> jax.Array:
    """`x @ (qweight * scales)` with x quantized to int8 per row: an int8 x int8 -> int32 matmul (W8A8).

    Args:
      x: `[m, K]` float activations.
      qweight: `[K, N]` int8.
      scales: `[1, N]` float, one per output column.
      impl, interpret, block_m, block_n: as `int4_matmul` (the whole K is one step).

    Returns:
      `[m, N]` in x.dtype.
    """
    impl, backend, interpret = _resolve_impl(impl, interpret)
    if impl == "reference":
        return w8a8_matmul_reference(x, qweight, scales)
    _check(x, qweight, scales, None, x.shape[1], bits=8)
    return _w8a8_pallas(x, qweight, scales, backend=backend, interpret=interpret, block_m=block_m, block_n=block_n)
