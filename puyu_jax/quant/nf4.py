"""NF4 (4-bit NormalFloat) weights with double-quantized scales, as in QLoRA.

A weight is flattened (row-major, in the flat-dict layout) and cut into blocks of
`block` (64) values. Each block keeps its absmax; the values divided by it are rounded to
the nearest of the 16 NF4 levels (bitsandbytes' table, quantiles of N(0, 1) scaled to
[-1, 1] with an exact zero). Codes are packed two per byte (first value in the high
nibble). The absmax scales are themselves quantized (double quantization): their mean is
subtracted and the rest stored as int8 in blocks of `scale_block` (256), each with an fp32
scale. Storage: 0.5 + 1/64 + 4/(64*256) bytes per parameter (~0.516).

`NF4Tensor` is a `PackedWeight`: a `Projection` whose kernel holds one dequantizes it
(plain jnp, inside the jit'd forward) right before the matmul that uses it. QLoRA
(`puyu_jax.finetune.lora`) stores its frozen base this way.
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from puyu_jax.models.projection import PackedWeight

#: bitsandbytes' NF4 levels (bitsandbytes/functional.py, `get_4bit_type("nf4")`).
NF4_TABLE = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
], dtype=np.float32)


def nf4_levels(offset: float = 0.9677083) -> np.ndarray:
    """The NF4 levels derived as in QLoRA's `create_normal_map`: 8 positive and 7 negative
    N(0, 1) quantiles between `offset` and 0.5, plus 0, normalised to [-1, 1]."""
    ppf = NormalDist().inv_cdf
    pos = [ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    v = np.sort(np.array(pos + [0.0] + neg))
    return (v / v.max()).astype(np.float32)


@flax.struct.dataclass
class NF4Tensor(PackedWeight):
    """A weight of `shape` stored as packed NF4 codes with double-quantized block scales."""

    codes: jax.Array  # uint8 [ceil(n / 2)], two 4-bit codes per byte
    scale_q: jax.Array  # int8 [n_blocks]: (absmax - offset) / scale2, rounded
    scale2: jax.Array  # float32 [ceil(n_blocks / scale_block)]
    offset: jax.Array  # float32 []: mean of the absmax scales
    shape: tuple[int, ...] = flax.struct.field(pytree_node=False)
    dtype: str = flax.struct.field(pytree_node=False, default="float32")
    block: int = flax.struct.field(pytree_node=False, default=64)
    scale_block: int = flax.struct.field(pytree_node=False, default=256)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return sum(int(x.size) * x.dtype.itemsize for x in (self.codes, self.scale_q, self.scale2, self.offset))

    def absmax(self) -> jax.Array:
        """The dequantized per-block absmax scales [n_blocks] (float32)."""
        s2 = jnp.repeat(self.scale2, self.scale_block)[: self.scale_q.shape[0]]
        return self.scale_q.astype(jnp.float32) * s2 + self.offset

    def dequantize(self, dtype=None) -> jax.Array:
        """The weight as `dtype` (default: the original dtype), shape `shape`."""
        hi = (self.codes >> 4).astype(jnp.int32)
        lo = (self.codes & 0xF).astype(jnp.int32)
        idx = jnp.stack([hi, lo], axis=-1).reshape(-1)
        vals = jnp.asarray(NF4_TABLE)[idx].reshape(-1, self.block) * self.absmax()[:, None]
        out = vals.reshape(-1)[: self.size].reshape(self.shape)
        return out.astype(dtype or self.dtype)


def quantize_nf4(w, block: int = 64, scale_block: int = 256) -> NF4Tensor:
    """NF4-quantizes an array (any shape; padded to whole blocks internally)."""
    return _quantize(jnp.asarray(w), block, scale_block)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize(w: jax.Array, block: int, scale_block: int) -> NF4Tensor:
    dtype = jnp.dtype(w.dtype).name
    flat = w.reshape(-1).astype(jnp.float32)
    n = flat.shape[0]
    if block % 2:
        raise ValueError(f"block={block} must be even (two codes per byte)")
    pad = (-n) % block
    flat = jnp.pad(flat, (0, pad)).reshape(-1, block)
    absmax = jnp.max(jnp.abs(flat), axis=1)
    normed = flat / jnp.where(absmax == 0, 1.0, absmax)[:, None]
    table = jnp.asarray(NF4_TABLE)
    mids = (table[1:] + table[:-1]) / 2
    codes = jnp.searchsorted(mids, normed.reshape(-1)).astype(jnp.uint8)
    packed = (codes[0::2] << 4) | codes[1::2]
    # double quantization of the block scales
    offset = jnp.mean(absmax)
    centred = absmax - offset
    nb = centred.shape[0]
    cpad = jnp.pad(centred, (0, (-nb) % scale_block)).reshape(-1, scale_block)
    scale2 = jnp.max(jnp.abs(cpad), axis=1) / 127.0
    scale2 = jnp.where(scale2 == 0, 1.0, scale2)
    scale_q = jnp.clip(jnp.round(cpad / scale2[:, None]), -127, 127).astype(jnp.int8).reshape(-1)[:nb]
    return NF4Tensor(packed, scale_q, scale2.astype(jnp.float32), offset.astype(jnp.float32),
                     tuple(int(s) for s in w.shape), dtype, block, scale_block)


def nf4_bytes_per_param(block: int = 64, scale_block: int = 256) -> float:
    """Storage bytes per parameter of `NF4Tensor` (codes + int8 scales + fp32 second-level scales)."""
    return 0.5 + 1.0 / block + 4.0 / (block * scale_block)
