"""GPTQ: error-compensating int4 rounding (Frantar et al., 2023), as in GPTQ / AutoGPTQ.

For a linear `y = x @ W` (`W [K, N]`) and calibration inputs `X [n, K]`, the layer-wise
objective `||X W - X Q||^2` has the Hessian `H = X^T X` (the factor 2/n does not matter).
GPTQ quantizes the K rows of W one at a time (a "column" in the paper's `[N, K]` layout)
and spreads each row's rounding error over the rows not yet quantized, weighted by the
inverse Hessian:

    H += damp * mean(diag H) * I                 (damping, default 0.01; dead inputs get H_ii = 1)
    U  = cholesky(H^-1)^T                        (upper triangular, H^-1 = U^T U)
    for row i:  q_i = Q(w_i);  e = (w_i - q_i) / U_ii;  w_j -= U_ij * e   (j > i)

Lazy batch updates: rows are processed in blocks of `block_size`; inside a block the error
is propagated row by row, to the rows after the block once per block (one matmul).

Groups are the `Int4Weight` groups (contiguous `group_size` rows of K, any kind: zero,
min, sym). Without act-order a group's scale / offset are taken from the (already
error-updated) rows when GPTQ reaches the group's first row, as in GPTQ's reference code.
With act-order, rows are visited by decreasing `H_ii` (the most active inputs first) and
every group's scale / offset are fixed beforehand from the float weight ("static groups"
in AutoGPTQ), since the packed layout needs groups of contiguous rows; the codes are put
back in row order, so the result is the same kind of `Int4Weight` as RTN's and runs through
the same kernels. With `H = I` (and no damping) GPTQ is RTN.

`apply_gptq` runs the calibration windows through the model one decoder block at a time;
for each block it accumulates the Hessians of its four input groups (q/k/v share
attn_norm's output, o the attention output, gate/up share mlp_norm's output, down
silu(gate) * up), quantizes the seven projections (q/k/v and gate/up as one concatenated
weight each: GPTQ treats output columns independently), and feeds the next block with the
quantized block's outputs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.models.transformer import Transformer
from puyu_jax.quant.int4 import Int4Weight, _check_kind, check_group_size, int4_weight, quantize_codes

Array = jax.Array


@dataclass(frozen=True)
class GPTQConfig:
    """GPTQ settings.

    group_size: int4 group size along K.
    kind: "zero" (integer zero points), "min" (float minimums) or "sym".
    damp: dampening, as a fraction of the mean Hessian diagonal.
    act_order: visit rows by decreasing Hessian diagonal (static groups).
    block_size: rows per lazy batch update (rounded up to a multiple of group_size).
    batch_size: calibration windows per block forward.
    """

    group_size: int = 128
    kind: str = "zero"
    damp: float = 0.01
    act_order: bool = False
    block_size: int = 128
    batch_size: int = 4


def gptq_quantize(w2: Array, hessian: Array, *, group_size: int = 128, kind: str = "zero", damp: float = 0.01,
                  act_order: bool = False, block_size: int = 128) -> tuple[Array, Array, Array | None]:
    """GPTQ codes of one weight.

    Args:
      w2: float `[K, N]` (y = x @ w2).
      hessian: `[K, K]`, `X^T X` of the layer's calibration inputs.
      group_size, kind, damp, act_order, block_size: see `GPTQConfig`.
    Returns:
      (q int32 [K, N] codes 0..15 in row order, scales [G, N], offsets [G, N] or None for sym),
      G = ceil(K / group_size): the arguments of `puyu_jax.quant.int4.int4_weight`.

    The row loop runs in NumPy (float32, the precision of GPTQ's reference code; the inverse
    Hessian's Cholesky factor in float64): it is sequential by nature, and on the host it needs
    no compilation for each weight shape.
    """
    check_group_size(group_size)
    _check_kind(kind)
    w = np.array(w2, np.float32)
    h = np.array(hessian, np.float64)
    k, n = w.shape
    if h.shape != (k, k):
        raise ValueError(f"hessian {h.shape} does not fit weight {w.shape}: expected ({k}, {k})")
    g = group_size
    bs = g * max(1, -(-block_size // g))
    n_groups = -(-k // g)
    diag = np.diagonal(h).copy()
    diag[diag == 0] = 1.0  # inputs never seen: nothing to compensate
    diag += damp * np.mean(diag)
    h[np.diag_indices(k)] = diag
    if act_order:
        # static groups: every group's parameters from the float weight, before any update
        wp = np.pad(w, ((0, n_groups * g - k), (0, 0)), mode="edge").reshape(n_groups, g, n)
        sc, of = _np_params(wp.max(axis=1), wp.min(axis=1), kind)
        perm = np.argsort(-diag, kind="stable")
        w, h = w[perm], h[perm][:, perm]
        row_group = perm // g
        scales, offsets = sc, of
    else:
        scales = np.zeros((n_groups, n), np.float32)
        offsets = None if kind == "sym" else np.zeros((n_groups, n), np.float32)
    hinv = np.linalg.inv(np.linalg.cholesky(h))  # L^-1;  H^-1 = L^-T L^-1
    u = np.linalg.cholesky(hinv.T @ hinv).T.astype(np.float32)  # upper: H^-1 = u^T u
    q = np.zeros((k, n), np.int32)
    for b0 in range(0, k, bs):
        b1 = min(b0 + bs, k)
        w1 = w[b0:b1].copy()
        u1 = u[b0:b1, b0:b1]
        err1 = np.zeros((b1 - b0, n), np.float32)
        for r in range(b1 - b0):
            i = b0 + r
            if act_order:
                s_i = scales[row_group[i]]
                o_i = None if offsets is None else offsets[row_group[i]]
            else:
                if i % g == 0:
                    seg = w1[r : r + g]
                    sc, of = _np_params(seg.max(axis=0), seg.min(axis=0), kind)
                    scales[i // g] = sc
                    if offsets is not None:
                        offsets[i // g] = of
                s_i = scales[i // g]
                o_i = None if offsets is None else offsets[i // g]
            wi = w1[r]
            qi = quantize_codes(wi, s_i, o_i, kind, xp=np)
            e = (wi - _np_dequant(qi, s_i, o_i, kind)) / u1[r, r]
            w1[r + 1 :] -= np.outer(u1[r, r + 1 :], e)
            q[i] = qi
            err1[r] = e
        if b1 < k:
            w[b1:] -= u[b0:b1, b1:].T @ err1
    if act_order:
        q = q[np.argsort(perm)]
    return (jnp.asarray(q), jnp.asarray(scales, jnp.float32),
            None if offsets is None else jnp.asarray(offsets, jnp.float32))


def _np_params(wmax, wmin, kind):
    """`puyu_jax.quant.int4.group_params`' formulas in NumPy (float32)."""
    if kind == "sym":
        scale = np.where(-wmin > wmax, wmin, wmax) / np.float32(-8.0)
        return np.where(np.abs(scale) < 1e-8, np.float32(1e-8), scale).astype(np.float32), None
    scales = (np.maximum(wmax - wmin, np.float32(1e-5)) / np.float32(15)).astype(np.float32)
    if kind == "min":
        return scales, wmin.astype(np.float32)
    return scales, np.clip(-np.round(wmin / scales), 0, 15).astype(np.float32)


def _np_dequant(q, s, o, kind):
    q = q.astype(np.float32)
    return (q - o) * s if kind == "zero" else q * s + o if kind == "min" else (q - 8.0) * s


def gptq_int4(w: Array, hessian: Array, n_in: int = 1, **kwargs) -> Int4Weight:
    """An `Int4Weight` of the kernel `w` (first `n_in` axes contracted) quantized by GPTQ.

    Args:
      w: the float kernel.
      hessian: `[K, K]` with K the product of the first `n_in` axes.
      **kwargs: `gptq_quantize` settings (group_size, kind, damp, act_order, block_size).
    """
    shape = tuple(int(s) for s in w.shape)
    k = math.prod(shape[:n_in])
    group_size = kwargs.get("group_size", 128)
    kind = kwargs.get("kind", "zero")
    q, scales, offsets = gptq_quantize(jnp.asarray(w).reshape(k, -1), hessian, **kwargs)
    return int4_weight(q, scales, offsets, kind, shape, n_in, group_size)


@jax.jit
def _gram(x: Array) -> Array:
    return jnp.dot(x.T, x, precision="highest")


def apply_gptq(model: Transformer, calib_tokens, cfg: GPTQConfig = GPTQConfig(), *,
               log=None) -> tuple[dict[str, Int4Weight], dict]:
    """GPTQ int4 weights of every layer's seven projections.

    Args:
      model: a float Transformer (left unchanged).
      calib_tokens: int [n, t] calibration windows.
      cfg: settings.
      log: optional callable(str) for progress lines.
    Returns:
      ({flat kernel name: Int4Weight}, {"layers": [...], "seconds": ..., "calib_tokens": ...}),
      ready for `puyu_jax.quant.model.install_weights`.
    """
    from puyu_jax.quant.awq import _TAPS, _block_forward, _tapped_copy, calibration_inputs
    from puyu_jax.quant.model import n_in_axes

    check_group_size(cfg.group_size)
    _check_kind(cfg.kind)
    t0 = time.time()
    work, x, inv_freq = calibration_inputs(model, calib_tokens)
    n, t = x.shape[:2]
    groups = {"q_proj": ("attn", ("q_proj", "k_proj", "v_proj")), "o_proj": ("attn", ("o_proj",)),
              "gate_proj": ("mlp", ("gate_proj", "up_proj")), "down_proj": ("mlp", ("down_proj",))}
    weights, layers = {}, []
    for i, block in enumerate(work.layers):
        graphdef, state = nnx.split(_tapped_copy(block))
        hess = {name: 0.0 for _, name in _TAPS}
        for j in range(0, n, cfg.batch_size):
            _, taps = _block_forward(graphdef, state, x[j : j + cfg.batch_size], inv_freq)
            for name, v in taps.items():
                hess[name] = hess[name] + _gram(v)
        row = {"layer": i}
        for tap, (parent, names) in groups.items():
            mod = getattr(block, parent)
            kernels = [getattr(mod, nm).kernel.get_value() for nm in names]
            n_in = n_in_axes(f"{parent}/{names[0]}/kernel")
            k = math.prod(kernels[0].shape[:n_in])
            w2 = jnp.concatenate([kk.reshape(k, -1).astype(jnp.float32) for kk in kernels], axis=1)
            h = hess[tap]
            q, scales, offsets = gptq_quantize(w2, h, group_size=cfg.group_size, kind=cfg.kind, damp=cfg.damp,
                                               act_order=cfg.act_order, block_size=cfg.block_size)
            start = 0
            for nm, kk in zip(names, kernels):
                cols = math.prod(kk.shape[n_in:])
                sl = slice(start, start + cols)
                start += cols
                wq = int4_weight(q[:, sl], scales[:, sl], None if offsets is None else offsets[:, sl], cfg.kind,
                                 kk.shape, n_in, cfg.group_size)
                weights[f"layers/{i}/{parent}/{nm}/kernel"] = wq
                proj = getattr(mod, nm)
                proj.kernel.set_value(wq.dequantize(kk.dtype))  # the next block sees the quantized block
            deq = jnp.concatenate([getattr(mod, nm).kernel.get_value().reshape(k, -1).astype(jnp.float32)
                                   for nm in names], axis=1)
            d = w2 - deq
            row[tap.removesuffix("_proj")] = {"err": float(jnp.sum(d * jnp.dot(h, d, precision="highest")))
                                              / max(n * t, 1)}
        graphdef, state = nnx.split(_tapped_copy(block))
        x = jnp.concatenate([_block_forward(graphdef, state, x[j : j + cfg.batch_size], inv_freq)[0]
                             for j in range(0, n, cfg.batch_size)], axis=0)
        layers.append(row)
        if log is not None:
            log(f"layer {i:3d}  " + "; ".join(f"{g}: err {v['err']:.3g}" for g, v in row.items() if g != "layer"))
    return weights, {"layers": layers, "seconds": round(time.time() - t0, 1), "calib_tokens": int(n * t)}
