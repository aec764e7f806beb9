"""Weight-only int4 matmul: `y = x @ dequant(W)` with W stored as packed 4-bit groups.

Layout (shared with the quantizers and checkpoints; do not change it):

* A float weight `W [K, N]` (used as `y = x @ W`) is quantized group-wise along K in groups of
  `group_size` rows (`K % group_size == 0`), asymmetrically:
  `q = clip(round(W / scale) + zero, 0, 15)`, `scales [K // group_size, N]` (fp32 / bf16 / fp16),
  `zeros [K // group_size, N]` float holding integers 0..15. Dequant: `W ~= (q - zero) * scale`.
* Packed storage `qweight: uint8 [K // 2, N]`, low nibble = `q[2i, n]`, high nibble = `q[2i+1, n]`.

Shapes use einsum letters: m rows of activations, K input features, N output features,
G = K // group_size groups.

`int4_matmul` is the Pallas kernel (Triton on GPU, Mosaic on TPU, interpret mode on CPU for tests);
`int4_matmul_reference` is its plain-JAX twin and the CPU serving path.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from puyu_jax.kernels.target import kernel_backend

__all__ = ["pack_int4", "unpack_int4", "int4_matmul", "int4_matmul_reference"]


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


def _check(x, qweight, scales, zeros, group_size):
    m, k = x.shape
    k2, n = qweight.shape
    if qweight.dtype != jnp.uint8:
        raise ValueError(f"qweight must be uint8, got {qweight.dtype}")
    if 2 * k2 != k:
        raise ValueError(f"x has K={k} but qweight packs {2 * k2} rows")
    if group_size % 2 or k % group_size:
        raise ValueError(f"group_size={group_size} must be even and divide K={k}")
    g = k // group_size
    if scales.shape != (g, n) or zeros.shape != (g, n):
        raise ValueError(f"scales/zeros must be {(g, n)}, got {scales.shape} and {zeros.shape}")
    return m, k, n


def _dequant_halves(qweight, scales, zeros, group_size, dtype):
    """`[K/2, N]` packed -> (even rows, odd rows) of the dequantized weight, each `[K/2, N]`.

    Packed row i holds W rows 2i and 2i+1, both in group `i // (group_size / 2)`, so the
    per-group scale/zero broadcast over half-groups and the rows never need interleaving.
    """
    k2, n = qweight.shape
    half = group_size // 2
    s = scales.astype(jnp.float32)[:, None, :]
    z = zeros.astype(jnp.float32)[:, None, :]
    low = (qweight & 0xF).astype(jnp.float32).reshape(k2 // half, half, n)
    high = (qweight >> 4).astype(jnp.float32).reshape(k2 // half, half, n)
    w_even = ((low - z) * s).astype(dtype).reshape(k2, n)
    w_odd = ((high - z) * s).astype(dtype).reshape(k2, n)
    return w_even, w_odd


def int4_matmul_reference(x: jax.Array, qweight: jax.Array, scales: jax.Array, zeros: jax.Array, *,
                          group_size: int = 128) -> jax.Array:
    """Plain-JAX twin of `int4_matmul`: dequantize the whole weight, then one matmul.

    Args:
      x: `[m, K]` activations (fp32 / bf16 / fp16).
      qweight: `[K // 2, N]` uint8, packed as `pack_int4`.
      scales: `[G, N]` float, G = K // group_size.
      zeros: `[G, N]` float with integer values 0..15.
      group_size: rows of K per quantization group.

    Returns:
      `[m, N]` in x.dtype, accumulated in fp32.
    """
    _check(x, qweight, scales, zeros, group_size)
    w_even, w_odd = _dequant_halves(qweight, scales, zeros, group_size, x.dtype)
    # x[:, 2i] meets W row 2i (low nibbles), x[:, 2i+1] meets row 2i+1 (high nibbles); two
    # half-size dots avoid materializing the interleaved [K, N] weight.
    y = jnp.dot(x[:, 0::2], w_even, preferred_element_type=jnp.float32)
    y = y + jnp.dot(x[:, 1::2], w_odd, preferred_element_type=jnp.float32)
    return y.astype(x.dtype)


def _int4_kernel(xe_ref, xo_ref, qw_ref, s_ref, z_ref, o_ref, *, group_size: int, groups_per_step: int,
                 groups_per_load: int):
    """One (m tile, n tile) program; loops over K a `groups_per_step` groups at a time.

    Refs: xe/xo `[bm, K/2]` (even / odd columns of x), qw `[K/2, bn]`, s/z `[G, bn]`, o `[bm, bn]`.
    Each load of x takes `groups_per_load` consecutive groups (`half * groups_per_load` columns):
    Mosaic needs lane slices at multiples of 128, so on TPU groups of 128 rows (64 packed rows)
    are loaded and dequantized two at a time and their weights stacked along sublanes.
    """
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
                z = z_ref[pl.ds(gi, 1), :].astype(jnp.float32)
                q = qw if groups_per_load == 1 else qw[u * half:(u + 1) * half]
                evens.append((((q & 0xF).astype(jnp.float32) - z) * s).astype(dtype))
                odds.append((((q >> 4).astype(jnp.float32) - z) * s).astype(dtype))
            w_even = evens[0] if groups_per_load == 1 else jnp.concatenate(evens, axis=0)
            w_odd = odds[0] if groups_per_load == 1 else jnp.concatenate(odds, axis=0)
            acc += jnp.dot(xe_ref[:, cols], w_even, preferred_element_type=jnp.float32)
            acc += jnp.dot(xo_ref[:, cols], w_odd, preferred_element_type=jnp.float32)
        return acc

    acc = jax.lax.fori_loop(0, n_groups // groups_per_step, step, jnp.zeros((bm, bn), jnp.float32))
    o_ref[...] = acc.astype(o_ref.dtype)


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _out_struct(shape, dtype, *inputs):
    """Output type for pallas_call that also works inside `jax.shard_map(check_vma=True)`: the
    result varies over every mesh axis any input varies over."""
    varying = frozenset().union(*(jax.typeof(a).manual_axis_type.varying for a in inputs))
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.sharding.ManualAxisType(varying=varying))


@functools.partial(jax.jit, static_argnames=("group_size", "backend", "interpret", "block_m", "block_n",
                                             "block_k"))
def _int4_pallas(x, qweight, scales, zeros, *, group_size, backend, interpret, block_m, block_n, block_k):
    m, k, n = x.shape[0], x.shape[1], qweight.shape[1]
    # Decode has m of 1..32: shrink the m tile to the smallest power of two that holds m
    # (16 at least, the smallest tensor-core / MXU-friendly tile) and pad rows to a whole tile.
    bm = max(16, min(block_m, _pow2_at_least(m)))
    m_pad = -(-m // bm) * bm
    if m_pad != m:
        x = jnp.pad(x, ((0, m_pad - m), (0, 0)))
    bn = min(block_n, n)
    if n % bn:
        raise ValueError(f"N={n} must be a multiple of block_n={bn}")
    if block_k % group_size:
        raise ValueError(f"block_k={block_k} must be a multiple of group_size={group_size}")
    groups = k // group_size
    half = group_size // 2
    # Mosaic slices lanes at multiples of 128: on TPU, load x for 128 // half groups at once.
    per_load = 1
    if backend == "tpu" and half % 128:
        per_load = min(128 // half, groups)  # a K narrower than one load is loaded whole
        if 128 % half or groups % per_load:
            raise ValueError(f"TPU int4_matmul: group_size={group_size} must divide 256 or be a multiple of 256, "
                             f"and K={k} split into whole 256-row loads")
    per_step = max(per_load, min(block_k // group_size, groups) // per_load * per_load)
    while groups % per_step:
        per_step -= per_load
    # Splitting x into even / odd columns here (x is tiny next to W) lets the kernel pair them
    # with the low / high nibbles without strided loads.
    xe, xo = x[:, 0::2], x[:, 1::2]
    kernel = functools.partial(_int4_kernel, group_size=group_size, groups_per_step=per_step, groups_per_load=per_load)
    grid = (m_pad // bm, n // bn)
    in_specs = [
        pl.BlockSpec((bm, k // 2), lambda i, j: (i, 0)),
        pl.BlockSpec((bm, k // 2), lambda i, j: (i, 0)),
        pl.BlockSpec((k // 2, bn), lambda i, j: (0, j)),
        pl.BlockSpec((groups, bn), lambda i, j: (0, j)),
        pl.BlockSpec((groups, bn), lambda i, j: (0, j)),
    ]
    out_spec = pl.BlockSpec((bm, bn), lambda i, j: (i, j))
    if backend == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
    else:
        from jax.experimental.pallas import triton as pltriton

        # Passing Triton params selects the Triton lowering on GPU (not Mosaic GPU).
        params = pltriton.CompilerParams(num_warps=4, num_stages=2)
    y = pl.pallas_call(
        kernel,
        out_shape=_out_struct((m_pad, n), x.dtype, xe, xo, qweight, scales, zeros),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_spec,
        compiler_params=params,
        # XLA sees an opaque kernel otherwise (no FLOPs, no weight traffic in its cost analysis).
        cost_estimate=pl.CostEstimate(
            flops=2 * m_pad * k * n, transcendentals=0,
            bytes_accessed=qweight.size + (scales.size + zeros.size) * scales.dtype.itemsize
            + (m_pad * k + m_pad * n) * x.dtype.itemsize),
        interpret=interpret,
        name="int4_matmul",
    )(xe, xo, qweight, scales, zeros)
    return y[:m]


def int4_matmul(x: jax.Array, qweight: jax.Array, scales: jax.Array, zeros: jax.Array, *,
                group_size: int = 128, impl: str = "auto", interpret: bool | None = None,
                block_m: int = 32, block_n: int = 128, block_k: int = 256) -> jax.Array:
    """`x @ dequant(qweight, scales, zeros)` with the dequantization fused into the kernel.

    Args:
      x: `[m, K]` activations (fp32 / bf16 / fp16); any m (rows are padded to the m tile).
      qweight: `[K // 2, N]` uint8 packed as `pack_int4`.
      scales: `[G, N]` float, G = K // group_size.
      zeros: `[G, N]` float with integer values 0..15.
      group_size: rows of K per quantization group (even, divides K).
      impl: "auto" (Pallas on GPU / TPU, the reference on CPU), "pallas" (the kernel; interpret
        mode on CPU) or "reference".
      interpret: run the kernel in Pallas interpret mode; default: only on CPU.
      block_m, block_n, block_k: tile sizes; the grid is (m tiles, N / block_n) and each program
        loops over K in steps of block_k (a multiple of group_size). N must divide by block_n
        (or be smaller); block_n a power of two for the Triton lowering.

    Returns:
      `[m, N]` in x.dtype; products accumulated in fp32.
    """
    backend = kernel_backend()
    if impl == "auto":
        impl = "reference" if backend == "cpu" else "pallas"
    if impl == "reference":
        return int4_matmul_reference(x, qweight, scales, zeros, group_size=group_size)
    if impl != "pallas":
        raise ValueError(f"impl must be 'auto', 'pallas' or 'reference', got {impl!r}")
    _check(x, qweight, scales, zeros, group_size)
    if interpret is None:
        interpret = backend == "cpu"
    return _int4_pallas(x, qweight, scales, zeros, group_size=group_size,
                        backend="tpu" if backend == "tpu" else "gpu", interpret=interpret,
                        block_m=block_m, block_n=block_n, block_k=block_k)
