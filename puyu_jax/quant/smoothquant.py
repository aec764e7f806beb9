"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before W8A8.

For each group of projections that read the same input X (q/k/v after attn_norm, gate/up
after mlp_norm, down after `silu(gate) * up`; o_proj after v_proj when query and KV heads
are equally many), a per-input-channel factor

    s_j = max|X_j| ^ alpha / max|W_j| ^ (1 - alpha)

is multiplied into the weights' rows and divided out of what produces X (the RMSNorm's scale,
or up_proj's / v_proj's output columns), so the float model computes the same function while
X's channels become flat enough for per-token int8. `puyu_jax.quant.model.quantize_model(...,
"smoothquant")` then rounds the weights to per-channel int8 and the forward quantizes
activations per token (`puyu_jax.kernels.w8a8_matmul`). `max|X_j|` comes from calibration
text; alpha = 0.5 is the paper's default for Llama-style models.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.models.transformer import Transformer, rope_inv_freq
from puyu_jax.quant.awq import _block_forward, _k2, _scale_cols, _scale_rows, _set, _tapped_copy


def smoothing_factors(x_absmax: jax.Array, w2: jax.Array, alpha: float) -> jax.Array:
    """s [K] from the inputs' per-channel max |X| [K] and the weights `w2 [K, N]` (rows = input channels)."""
    w_absmax = jnp.max(jnp.abs(w2), axis=1)
    s = jnp.maximum(x_absmax, 1e-5) ** alpha / jnp.maximum(w_absmax, 1e-5) ** (1 - alpha)
    return jnp.clip(s, 1e-5, 1e5)


def apply_smoothquant(model: Transformer, calib_tokens, alpha: float = 0.5, batch_size: int = 4
                      ) -> tuple[Transformer, dict]:
    """The smoothed float model (the source is unchanged) and a report of the factors' ranges.

    Args:
      model: a float Transformer.
      calib_tokens: int [n, t] calibration windows.
      alpha: migration strength in [0, 1] (0: no smoothing).
      batch_size: windows per forward while collecting activations.
    """
    from puyu_jax.quant.model import shallow_copy

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1]")
    t0 = time.time()
    cfg = model.cfg
    out = shallow_copy(model)
    tokens = jnp.asarray(np.asarray(calib_tokens), jnp.int32)
    n, t = tokens.shape
    inv_freq = rope_inv_freq(cfg.rope, cfg.dim_per_head, cfg.max_position_embeddings, t)
    x = out.embed(tokens).astype(jnp.dtype(cfg.dtype))
    same_heads = cfg.num_heads == cfg.num_kv_heads
    layers = []
    for i, block in enumerate(out.layers):
        graphdef, state = nnx.split(_tapped_copy(block))
        outs, amax = [], {}
        for j in range(0, n, batch_size):
            o, taps = _block_forward(graphdef, state, x[j : j + batch_size], inv_freq)
            outs.append(o)
            for name, v in taps.items():
                m = jnp.max(jnp.abs(v), axis=0)
                amax[name] = m if name not in amax else jnp.maximum(amax[name], m)
        x = jnp.concatenate(outs, axis=0)
        attn, mlp = block.attn, block.mlp
        groups = [("qkv", "q_proj", [attn.q_proj, attn.k_proj, attn.v_proj], 1, block.attn_norm, "norm"),
                  ("gate_up", "gate_proj", [mlp.gate_proj, mlp.up_proj], 1, block.mlp_norm, "norm"),
                  ("down", "down_proj", [mlp.down_proj], 1, mlp.up_proj, "cols")]
        if same_heads:
            groups.append(("o", "o_proj", [attn.o_proj], 2, attn.v_proj, "cols"))
        row = {"layer": i}
        for gname, tap, projs, n_in, prev, prev_kind in groups:
            w2 = jnp.concatenate([_k2(p.kernel.get_value(), n_in) for p in projs], axis=1)
            s = smoothing_factors(amax[tap], w2, alpha)
            for p in projs:
                _scale_rows(p, s, n_in)
            if prev_kind == "norm":
                _set(prev.scale, prev.scale.get_value().astype(jnp.float32) / s)
            else:
                _scale_cols(prev, s, 1)
            row[gname] = {"s_min": float(jnp.min(s)), "s_max": float(jnp.max(s))}
        layers.append(row)
    return out, {"layers": layers, "alpha": alpha, "seconds": round(time.time() - t0, 1), "calib_tokens": int(n * t)}
