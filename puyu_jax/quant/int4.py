"""Group-wise int4 / int8 weights in the `int4_matmul` / `int8_matmul` layouts, and the RTN quantizer.

A kernel of any shape is viewed as `W [K, N]` with K its first `n_in` (contracted) axes
flattened and N the rest, so that `y = x @ W`. Along K it is cut into groups of
`group_size` rows; each (group, column) keeps a scale and an integer zero point:

    scale = max(max(W_g) - min(W_g), 1e-5) / 15
    zero  = clip(-round(min(W_g) / scale), 0, 15)
    q     = clip(round(W / scale) + zero, 0, 15)          dequant: (q - zero) * scale

(the formula of llm-awq's `pseudo_quantize_tensor`; kind "zero"). Kind "min" keeps the float
minimum instead of a zero point (`q = round((W - min) / scale)`, GGUF Q4_1) and kind "sym"
has no offset (`scale = the signed value of largest magnitude / -8`, `q = round(W / scale) + 8`,
GGUF Q4_0); `quantize_int4(..., kind=)` rounds to any of them. `q` is packed two per byte with
`puyu_jax.kernels.pack_int4`: `qweight uint8 [K/2, N]`, low nibble row 2i, high row 2i+1.

When K is not a multiple of `group_size` (SmolLM2's hidden size 576 with groups of 128) the
weight is padded to the next multiple by repeating its last row, so the padded group's
min / max are those of its real rows; activations are zero-padded to match at run time and
the padded rows never contribute.

`Int4Weight` also holds the other kinds of `puyu_jax.kernels.int4_matmul` (float minimums,
GGUF Q4_1; symmetric, Q4_0), and `Int8Weight` holds int8 groups (Q8_0): the GGUF loader
(`puyu_jax.quant.gguf`) fills them from the file's blocks as they are.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp

from puyu_jax.kernels.int4_matmul import _dequant, offset_kind, pack_int4, unpack_int4

Array = jax.Array
QMAX = 15


class _KernelShape:
    """The original kernel's `shape` split at `n_in`: input features x output features."""

    shape: tuple[int, ...]
    n_in: int

    @property
    def in_features(self) -> int:
        return math.prod(self.shape[: self.n_in])

    @property
    def out_features(self) -> int:
        return math.prod(self.shape[self.n_in :])


@flax.struct.dataclass
class Int4Weight(_KernelShape):
    """A kernel of `shape` stored as packed int4 groups (see the module docstring).

    qweight: uint8 [Kp // 2, N], Kp = K rounded up to a multiple of group_size.
    scales:  float [Kp // group_size, N].
    zeros:   float [Kp // group_size, N], integer values 0..15 (w = (q - zero) * scale), or None.
    mins:    float [Kp // group_size, N] (w = q * scale + min), or None. Neither: w = (q - 8) * scale.
    """

    qweight: Array
    scales: Array
    zeros: Array | None
    shape: tuple[int, ...] = flax.struct.field(pytree_node=False)
    n_in: int = flax.struct.field(pytree_node=False, default=1)
    group_size: int = flax.struct.field(pytree_node=False, default=128)
    mins: Array | None = None

    bits = 4

    @property
    def kind(self) -> str:
        return offset_kind(self.zeros, self.mins)

    @property
    def padded_in_features(self) -> int:
        return 2 * self.qweight.shape[0]

    @property
    def nbytes(self) -> int:
        arrays = (self.qweight, self.scales, self.zeros, self.mins)
        return sum(int(x.size) * x.dtype.itemsize for x in arrays if x is not None)

    def dequantize_2d(self, dtype=jnp.float32) -> Array:
        """The weight as `[K, N]` (padding rows dropped)."""
        return self.dequantize_columns(slice(None), dtype)

    def dequantize_columns(self, cols, dtype=jnp.float32) -> Array:
        """Columns `cols` (an index array or slice over N) of the weight, `[K, len(cols)]`."""
        g = self.group_size
        q = unpack_int4(self.qweight[:, cols]).astype(jnp.float32)
        k, n = q.shape
        off = self.zeros if self.mins is None else self.mins
        s = self.scales[:, cols].astype(jnp.float32)[:, None]
        o = None if off is None else off[:, cols].astype(jnp.float32)[:, None]
        w = _dequant(q.reshape(k // g, g, n), s, o, self.kind).reshape(k, n)
        return w[: self.in_features].astype(dtype)

    def dequantize(self, dtype=jnp.float32) -> Array:
        """The weight in its original kernel shape."""
        return self.dequantize_2d(dtype).reshape(self.shape)


@flax.struct.dataclass
class Int8Weight(_KernelShape):
    """A kernel of `shape` stored as symmetric int8 groups along K: w = q * scale.

    qweight: int8 [Kp, N], Kp = K rounded up to a multiple of group_size.
    scales:  float [Kp // group_size, N].
    act_bits: 16 (weight-only: float activations) or 8 (W8A8: activations quantized per token
      at run time; needs one group, i.e. per-channel scales).
    """

    qweight: Array
    scales: Array
    shape: tuple[int, ...] = flax.struct.field(pytree_node=False)
    n_in: int = flax.struct.field(pytree_node=False, default=1)
    group_size: int = flax.struct.field(pytree_node=False, default=32)
    act_bits: int = flax.struct.field(pytree_node=False, default=16)

    bits = 8
    kind = "sym"

    @property
    def padded_in_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(int(x.size) * x.dtype.itemsize for x in (self.qweight, self.scales))

    def dequantize_columns(self, cols, dtype=jnp.float32) -> Array:
        """Columns `cols` (an index array or slice over N) of the weight, `[K, len(cols)]`."""
        g = self.group_size
        q = self.qweight[:, cols].astype(jnp.float32)
        k, n = q.shape
        w = (q.reshape(k // g, g, n) * self.scales[:, cols].astype(jnp.float32)[:, None]).reshape(k, n)
        return w[: self.in_features].astype(dtype)

    def dequantize_2d(self, dtype=jnp.float32) -> Array:
        return self.dequantize_columns(slice(None), dtype)

    def dequantize(self, dtype=jnp.float32) -> Array:
        return self.dequantize_2d(dtype).reshape(self.shape)


QuantWeight = Int4Weight | Int8Weight


def _pad_rows(w2: Array, group_size: int) -> Array:
    pad = (-w2.shape[0]) % group_size
    return jnp.pad(w2, ((0, pad), (0, 0)), mode="edge") if pad else w2


KINDS = ("zero", "min", "sym")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {KINDS}")


def group_params(w2: Array, group_size: int, kind: str = "zero") -> tuple[Array, Array | None]:
    """(scales, offsets) `[K/G, N]` of `w2 [K, N]` (K a multiple of group_size) for an int4 kind.

    zero: scale = (max - min) / 15, integer zero point (offsets = zeros);
    min:  scale = (max - min) / 15, offsets = the float minimum (GGUF Q4_1);
    sym:  scale = the signed value of largest magnitude / -8, so it maps to code 0 (GGUF Q4_0);
          offsets None.
    """
    k, n = w2.shape
    g = w2.astype(jnp.float32).reshape(k // group_size, group_size, n)
    return _params(jnp.max(g, axis=1), jnp.min(g, axis=1), kind)


def _params(wmax: Array, wmin: Array, kind: str) -> tuple[Array, Array | None]:
    if kind == "sym":
        peak = jnp.where(-wmin > wmax, wmin, wmax)
        scale = peak / -8.0
        return jnp.where(jnp.abs(scale) < 1e-8, 1e-8, scale), None
    scales = jnp.maximum(wmax - wmin, 1e-5) / QMAX
    if kind == "min":
        return scales, wmin
    return scales, jnp.clip(-jnp.round(wmin / scales), 0, QMAX)


def quantize_codes(w: Array, scales: Array, offsets: Array | None, kind: str, xp=jnp) -> Array:
    """int4 codes 0..15 (int32) of `w` with broadcasting scales / offsets of `kind`.

    xp: the array module, jax.numpy (default) or numpy (GPTQ's column loop runs on the host)."""
    w = w.astype(xp.float32)
    if kind == "zero":
        q = xp.round(w / scales) + offsets
    elif kind == "min":
        q = xp.round((w - offsets) / scales)
    else:
        q = xp.round(w / scales) + 8.0
    return xp.clip(q, 0, QMAX).astype(xp.int32)


def quantize_groups(w2: Array, group_size: int, kind: str = "zero") -> tuple[Array, Array, Array | None]:
    """RTN codes of `w2 [K, N]`: (q int32 [K, N] in 0..15, scales, offsets); K % group_size == 0."""
    scales, offsets = group_params(w2, group_size, kind)
    s = jnp.repeat(scales, group_size, axis=0)
    o = None if offsets is None else jnp.repeat(offsets, group_size, axis=0)
    return quantize_codes(w2, s, o, kind), scales, offsets


def dequantize_groups(q: Array, scales: Array, offsets: Array | None, group_size: int, kind: str = "zero") -> Array:
    """The float32 `[K, N]` weight of codes `q` (see `puyu_jax.kernels.int4_matmul` for the kinds)."""
    s = jnp.repeat(scales.astype(jnp.float32), group_size, axis=0)
    o = None if offsets is None else jnp.repeat(offsets.astype(jnp.float32), group_size, axis=0)
    return _dequant(q.astype(jnp.float32), s, o, kind)


def fake_quantize(w2: Array, group_size: int, kind: str = "zero") -> Array:
    """Quantize then dequantize `w2 [K, N]` (any K; padded internally), float32 `[K, N]`.

    What the quantized kernel computes with; used by the AWQ searches.
    """
    k = w2.shape[0]
    q, s, o = quantize_groups(_pad_rows(w2, group_size), group_size, kind)
    return dequantize_groups(q, s, o, group_size, kind)[:k]


def check_group_size(group_size: int) -> None:
    if group_size % 2 or group_size < 2:
        raise ValueError(f"group_size={group_size} must be an even number >= 2")


def int4_weight(q: Array, scales: Array, offsets: Array | None, kind: str, shape: tuple[int, ...], n_in: int,
                group_size: int) -> Int4Weight:
    """Packs codes `q int [K, N]` (K the real rows; padded here by repeating the last row) and the
    `[ceil(K / group_size), N]` scales / offsets of `kind` into an `Int4Weight`."""
    qweight = pack_int4(_pad_rows(q, group_size))
    zeros, mins = (offsets, None) if kind == "zero" else (None, offsets) if kind == "min" else (None, None)
    return Int4Weight(qweight, scales, zeros, tuple(int(s) for s in shape), n_in, group_size, mins)


def quantize_int4(w: Array, n_in: int = 1, group_size: int = 128, kind: str = "zero") -> Int4Weight:
    """RTN-quantizes a kernel whose first `n_in` axes are contracted.

    Args:
      w: the float kernel, e.g. [d, h, e] (n_in=1) or o_proj's [h, e, d] (n_in=2).
      n_in: number of leading (input) axes.
      group_size: rows of K per group (even).
      kind: "zero" (integer zero points, the default), "min" (float minimums) or "sym".
    Returns:
      An `Int4Weight` remembering `w.shape`, `n_in` and `group_size`.
    """
    check_group_size(group_size)
    _check_kind(kind)
    shape = tuple(int(s) for s in w.shape)
    qweight, scales, offsets = _quantize(jnp.asarray(w), n_in, group_size, kind)
    zeros, mins = (offsets, None) if kind == "zero" else (None, offsets) if kind == "min" else (None, None)
    return Int4Weight(qweight, scales, zeros, shape, n_in, group_size, mins)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _quantize(w: Array, n_in: int, group_size: int, kind: str):
    k = math.prod(w.shape[:n_in])
    w2 = _pad_rows(w.reshape(k, -1).astype(jnp.float32), group_size)
    q, scales, offsets = quantize_groups(w2, group_size, kind)
    return pack_int4(q), scales, offsets


def quantize_int8(w: Array, n_in: int = 1, group_size: int = 0, act_bits: int = 16) -> Int8Weight:
    """Symmetric int8 RTN of a kernel whose first `n_in` axes are contracted (weight-only W8A16).

    scale = max|W_g| / 127 per (group, column), q = clip(round(W / scale), -127, 127).

    Args:
      w: the float kernel.
      n_in: number of leading (input) axes.
      group_size: rows of K per group; 0 = one group per output channel (the whole K).
      act_bits: 16 (W8A16) or 8 (W8A8; per-channel only).
    Returns:
      An `Int8Weight`.
    """
    if act_bits not in (8, 16) or (act_bits == 8 and group_size):
        raise ValueError(f"act_bits={act_bits} with group_size={group_size}: expected 16, or 8 with group_size 0")
    shape = tuple(int(s) for s in w.shape)
    k = math.prod(shape[:n_in])
    g = group_size or k
    if g < 1:
        raise ValueError(f"group_size={group_size} must be >= 0")
    qweight, scales = _quantize8(jnp.asarray(w), n_in, g)
    return Int8Weight(qweight, scales, shape, n_in, g, act_bits)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _quantize8(w: Array, n_in: int, group_size: int):
    k = math.prod(w.shape[:n_in])
    w2 = _pad_rows(w.reshape(k, -1).astype(jnp.float32), group_size)
    kp, n = w2.shape
    g = w2.reshape(kp // group_size, group_size, n)
    scales = jnp.maximum(jnp.max(jnp.abs(g), axis=1), 1e-8) / 127
    q = jnp.clip(jnp.round(g / scales[:, None]), -127, 127).astype(jnp.int8)
    return q.reshape(kp, n), scales
