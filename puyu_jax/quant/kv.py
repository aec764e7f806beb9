"""The quantized KV-cache formats (`EngineConfig.kv_dtype`), one scale per token and head.

* ``int8``: symmetric int8, `value = q * scale`, q in -127..127 (LMDeploy's `quant_policy=8`).
* ``int4``: asymmetric 4-bit, `value = c * scale + zero`, c in 0..15 (LMDeploy's
  `quant_policy=4`: per token and head, with a zero point: 15 levels on a symmetric range would
  lose one and waste half the range on skewed rows). In a page of s tokens the codes are packed
  two a byte *across tokens*: row r (of s / 2) holds token r in its low nibbles and token
  r + s / 2 in its high ones, every byte of the head dim. A page is then `[s / 2, e]` bytes, as
  wide as the head dim (a TPU reads it in place: a `[s, e / 2]` layout would be relaid out to
  128 lanes, copying the pool each call), and a kernel unpacks it with one mask and one shift
  into the page's first and second half of tokens. Before int4 quantization q, k and v are
  rotated over the head dim by `kv4_rotation` (a normalized Hadamard matrix H, block-diagonal
  when the head dim is not a power of two) and the attention output is rotated back by Hᵀ:
  q·k and the softmax weights are unchanged (H is orthogonal), but a few outlier channels are
  spread over all of them, so one scale per token no longer spends 15 levels on one channel
  (QuaRot, Ashkboos et al. 2024). On SmolLM2 this takes int4 KV from +11.9 % to +2.1 %
  perplexity on the held-out wiki text (docs/benchmarks.md).

The serving engine writes K/V pages in these formats (`serve/kv_cache.py`); the paged-attention
kernels and their twin read them (`k_scale` / `v_scale`, and `k_zero` / `v_zero` for int4).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from puyu_jax.kernels.paged_attention import unpack_pages4  # the page layout the kernels read

__all__ = ["quantize_kv", "dequantize_kv", "quantize_kv4", "dequantize_kv4", "pack_pages4", "unpack_pages4",
           "kv4_rotation"]


def quantize_kv(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric per-token-per-head int8 quantization over the last axis.

    Args:
      x: `[..., e]` float.

    Returns:
      (`[..., e]` int8 in -127..127, `[...]` float32 scale = absmax / 127); all-zero rows get
      scale 1 so that dequantization stays exact and finite.
    """
    xf = x.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(xf), axis=-1)
    scale = jnp.where(absmax > 0, absmax / 127.0, 1.0).astype(jnp.float32)
    q = jnp.clip(jnp.round(xf / scale[..., None]), -127, 127).astype(jnp.int8)
    return q, scale


def dequantize_kv(x_int8: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
    """`[..., e]` int8 and `[...]` scale -> `[..., e]` in `dtype` (int8 * scale)."""
    return (x_int8.astype(jnp.float32) * scale[..., None].astype(jnp.float32)).astype(dtype)


def quantize_kv4(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Asymmetric per-token-per-head 4-bit quantization over the last axis.

    Returns:
      (`[..., e]` uint8 codes in 0..15 (unpacked: `pack_pages4` packs a page), `[...]` float32
      scale = (max - min) / 15, `[...]` float32 zero = min); constant rows get scale 1 and
      dequantize exactly.
    """
    xf = x.astype(jnp.float32)
    lo, hi = jnp.min(xf, axis=-1), jnp.max(xf, axis=-1)
    scale = jnp.where(hi > lo, (hi - lo) / 15.0, 1.0).astype(jnp.float32)
    codes = jnp.clip(jnp.round((xf - lo[..., None]) / scale[..., None]), 0, 15).astype(jnp.uint8)
    return codes, scale, lo.astype(jnp.float32)


def dequantize_kv4(codes: jax.Array, scale: jax.Array, zero: jax.Array, dtype=jnp.float32) -> jax.Array:
    """`[..., e]` codes (unpacked), `[...]` scale and zero -> `[..., e]` in `dtype`."""
    return (codes.astype(jnp.float32) * scale[..., None].astype(jnp.float32)
            + zero[..., None].astype(jnp.float32)).astype(dtype)


def pack_pages4(codes: jax.Array) -> jax.Array:
    """`[..., s, e]` codes of whole pages -> `[..., s / 2, e]` bytes (row r: token r low, r + s/2 high)."""
    s = codes.shape[-2]
    if s % 2:
        raise ValueError(f"int4 KV needs an even block size, got {s}")
    c = codes.astype(jnp.uint8)
    return c[..., : s // 2, :] | (c[..., s // 2:, :] << 4)


def kv4_rotation(head_dim: int, dtype=jnp.float32) -> jax.Array:
    """`[e, e]` orthonormal rotation applied to q, k and v before int4 KV quantization: the
    Sylvester-Hadamard matrix of size e / sqrt(e), or, when e is not a power of two, a block
    diagonal of the largest power-of-two Hadamard block dividing e."""
    block = head_dim & -head_dim  # largest power of two dividing e
    h = np.ones((1, 1))
    while h.shape[0] < block:
        h = np.block([[h, h], [h, -h]])
    return jnp.asarray(np.kron(np.eye(head_dim // block), h / np.sqrt(block)), dtype)
