"""The int8 KV-cache format: symmetric int8 per token and head, one float32 scale each.

The serving engine writes K/V pages in this format (`EngineConfig.kv_cache_dtype="int8"`);
the paged-attention kernels and their twin read it (`k_scale` / `v_scale` beside the pages).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["quantize_kv", "dequantize_kv"]


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
