"""AWQ: activation-aware weight quantization (Lin et al., 2023), as in llm-awq / AutoAWQ.

Calibration windows run through the float model one decoder block at a time. For each block
the inputs of its four linear groups are captured:

    q, k, v     share attn_norm's output      previous op: attn_norm's scale
    o           attention output              previous op: v_proj (only when num_heads ==
                                              num_kv_heads; with GQA it is skipped, as llm-awq does)
    gate, up    share mlp_norm's output       previous op: mlp_norm's scale
    down        silu(gate) * up               previous op: up_proj's output columns

For each group a per-input-channel scale `s` is grid-searched (`n_grid` values of alpha in
[0, 1]):

    s = mean|x|^alpha / mean|w|^(1 - alpha),   s /= sqrt(max(s) * min(s))

where mean|x| is over calibration tokens and mean|w| is the mean over output columns of
|w| divided by its group's max (AutoAWQ's "duo scaling"). The chosen `s` minimises the MSE
of the group's outputs `x @ W` against `x @ Q(W * s) / s`, Q being int4 RTN;
`s = 1` (plain RTN) is always a candidate, so the search can only lower that error. Then
`W <- W * s` (input rows) and the previous op is divided by `s`, which leaves the float
model's function unchanged. Optionally each (group, output column) is then clipped to
`[-m, m]` with `m` the max |w| shrunk by up to `max_shrink`, chosen to minimise that
group's partial output error on a token subsample (q and k are not clipped). The next
block sees the float block's outputs. The result is a float model; `quantize_model` then
rounds it with RTN.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.models.transformer import Transformer, rope_inv_freq
from puyu_jax.quant.int4 import fake_quantize

Array = jax.Array
ASSETS = Path(__file__).resolve().parent / "assets"
CALIB_FILE = ASSETS / "calib_c4.jsonl"


@dataclass(frozen=True)
class AWQConfig:
    """AWQ search settings.

    group_size: int4 group size along K.
    n_grid: alpha values tried, evenly spaced in [0, 1].
    duo_scaling: s = x^a / w^(1-a) (True) or s = x^a (llm-awq's release).
    clip: run the weight clipping search after scaling.
    clip_grid, max_shrink: clipping tries max|w| * (1 - i / clip_grid) for i < max_shrink * clip_grid.
    inspect_modules: measure the q/k/v search on the attention block's output and the gate/up
      search on the MLP's output (llm-awq's "module2inspect"), instead of on the linears' own outputs.
    search_tokens: calibration tokens (a fixed random subset; whole windows when inspecting
      modules) on which the scale-search MSE is measured (mean|x| always uses them all); 0 = all.
    clip_tokens: tokens for the clipping search (llm-awq uses 512).
    batch_size: calibration windows per block forward.
    seed: seed of the token subsets.
    """

    group_size: int = 128
    n_grid: int = 20
    duo_scaling: bool = True
    inspect_modules: bool = True
    clip: bool = True
    clip_grid: int = 20
    max_shrink: float = 0.5
    search_tokens: int = 2048
    clip_tokens: int = 512
    batch_size: int = 8
    seed: int = 0


# ----------------------------------------------------------------------------- calibration data


def read_texts(path: str | Path) -> list[str]:
    """Documents of a .jsonl (a "text" field per line) or a plain-text file (one per line)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".jsonl":
        return [t for t in (json.loads(ln).get("text", "") for ln in lines if ln.strip()) if t.strip()]
    return [ln for ln in lines if ln.strip()]


def calibration_tokens(tokenizer, texts: list[str] | None = None, n_samples: int = 16, seq_len: int = 512) -> np.ndarray:
    """Calibration windows int32 [n, seq_len]: documents tokenized, concatenated, cut.

    Args:
      tokenizer: a `puyu_jax.tokenizer.Tokenizer`.
      texts: documents (default: the shipped C4 calibration slice).
      n_samples: windows wanted (fewer when the text runs out).
      seq_len: tokens per window.
    """
    texts = read_texts(CALIB_FILE) if texts is None else texts
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer.encode(t))
        if len(ids) >= n_samples * seq_len:
            break
    n = min(n_samples, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"calibration text gives {len(ids)} tokens, fewer than seq_len={seq_len}")
    return np.asarray(ids[: n * seq_len], np.int32).reshape(n, seq_len)


# ----------------------------------------------------------------------------- capture


class _Tap(nnx.Module):
    """Wraps a projection and sows its input (an `nnx.Intermediate` named "x")."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, spec: str, x: Array) -> Array:
        self.sow(nnx.Intermediate, "x", x)
        return self.inner(spec, x)


_TAPS = (("attn", "q_proj"), ("attn", "o_proj"), ("mlp", "gate_proj"), ("mlp", "down_proj"))


def calibration_inputs(model: Transformer, calib_tokens):
    """What a layer-by-layer calibration starts from: a shallow copy of `model` to change,
    the embedded calibration windows x [n, t, d] (what the first block sees) and the rope
    inverse frequencies for t positions."""
    from puyu_jax.quant.model import shallow_copy

    mcfg = model.cfg
    work = shallow_copy(model)
    tokens = jnp.asarray(np.asarray(calib_tokens), jnp.int32)
    inv_freq = rope_inv_freq(mcfg.rope, mcfg.dim_per_head, mcfg.max_position_embeddings, tokens.shape[1])
    x = jnp.take(work.embed.embedding[...], tokens, axis=0).astype(jnp.dtype(mcfg.dtype))
    return work, x, inv_freq


def _tapped_copy(block):
    copy = nnx.clone(block)
    for parent, name in _TAPS:
        mod = getattr(copy, parent)
        setattr(mod, name, _Tap(getattr(mod, name)))
    return copy


@functools.partial(jax.jit, static_argnums=0)
def _block_forward(graphdef, state, x, inv_freq):
    """One tapped block on x [b, t, d]: (output [b, t, d], {tap: input [b*t, K]})."""
    block = nnx.merge(graphdef, state)
    b, t, _ = x.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    (out, _), inter = nnx.capture(block, nnx.Intermediate)(x, positions, inv_freq, mask)
    taps = {}
    for path, var in nnx.to_flat_state(inter):
        (xin,) = var.get_value()
        taps[str(path[-2])] = xin.reshape(b * t, -1).astype(jnp.float32)
    return out, taps


# ----------------------------------------------------------------------------- searches


def _pad_groups(w2: Array, x: Array | None, group_size: int):
    """Pads K to a multiple of group_size: w by repeating its last row, x with zeros."""
    pad = (-w2.shape[0]) % group_size
    if pad:
        w2 = jnp.pad(w2, ((0, pad), (0, 0)), mode="edge")
        if x is not None:
            x = jnp.pad(x, ((0, 0), (0, pad)))
    return w2, x


def _w_mean(w2: Array, group_size: int) -> Array:
    """Per input channel mean over columns of |w| / max|w| within its group: [K]."""
    k, n = w2.shape
    wp, _ = _pad_groups(w2, None, group_size)
    g = jnp.abs(wp).reshape(-1, group_size, n)
    g = g / (jnp.max(g, axis=1, keepdims=True) + 1e-6)
    return jnp.mean(g.reshape(-1, n), axis=1)[:k]


def _scale_for(alpha, x_mean, w_mean, duo: bool):
    """s for one alpha (alpha < 0: s = 1, plain RTN)."""
    s = jnp.power(x_mean, alpha)
    if duo:
        s = s / (jnp.power(w_mean, 1.0 - alpha) + 1e-4)
    s = jnp.maximum(s, 1e-4)
    s = s / jnp.sqrt(jnp.max(s) * jnp.min(s))
    return jnp.where(alpha < 0, jnp.ones_like(s), s)


@functools.partial(jax.jit, static_argnames=("group_size", "duo"))
def _scale_candidate(alpha, x_mean, w_mean, w2, xs, ref, *, group_size, duo):
    """(loss, s) for one alpha on the group's concatenated linear outputs."""
    s = _scale_for(alpha, x_mean, w_mean, duo)
    wq = fake_quantize(w2 * s[:, None], group_size) / s[:, None]
    out = jnp.dot(xs, wq, precision="highest")
    return jnp.mean((out - ref) ** 2), s


def _call_module(module, kind: str, x: Array, inv_freq: Array) -> Array:
    """The inspected module's output on x [b, t, d] (attention: causal, positions 0..t-1)."""
    if kind == "mlp":
        return module(x)
    b, t, _ = x.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
    return module(x, positions, inv_freq, mask)[0]


@functools.partial(jax.jit, static_argnames=("graphdef", "kind"))
def _module_output(graphdef, state, x, inv_freq, *, kind):
    return _call_module(nnx.merge(graphdef, state), kind, x, inv_freq).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "names", "group_size", "duo"))
def _module_candidate(graphdef, state, alpha, x_mean, w_mean, x, ref, inv_freq, *, kind, names, group_size, duo):
    """(loss, s) for one alpha on the inspected module's output, its linears `names` quantized."""
    s = _scale_for(alpha, x_mean, w_mean, duo)
    module = nnx.merge(graphdef, state)
    for name in names:
        proj = getattr(module, name)
        k = proj.kernel.get_value()
        w2 = k.reshape(k.shape[0], -1).astype(jnp.float32)
        wq = fake_quantize(w2 * s[:, None], group_size) / s[:, None]
        proj.kernel.set_value(wq.reshape(k.shape).astype(k.dtype))
    out = _call_module(module, kind, x, inv_freq).astype(jnp.float32)
    return jnp.mean((out - ref) ** 2), s


def _grid_search(candidate, cfg: AWQConfig) -> tuple[Array, dict]:
    """Best s over alpha in {s = 1} + linspace(0, 1, n_grid); candidate(alpha) -> (loss, s)."""
    alphas = [-1.0] + [float(a) for a in np.linspace(0.0, 1.0, cfg.n_grid)]
    best, rtn_loss = (math.inf, None, None), None
    for a in alphas:
        loss, s = candidate(jnp.float32(a))
        loss = float(loss)
        if a < 0:
            rtn_loss = loss
        if loss < best[0]:
            best = (loss, a, s)
    loss, a, s = best
    return s, {"alpha": None if a < 0 else round(a, 4), "loss": loss, "rtn_loss": rtn_loss}


def search_scale_module(module, kind: str, names: tuple[str, ...], x: Array, xw: Array, inv_freq: Array,
                        cfg: AWQConfig) -> tuple[Array, dict]:
    """The shared input scale of the linears `names` of an attention ("attn") or MLP ("mlp")
    module, judged on the module's output.

    Args:
      x: [n, d] all captured module inputs (for mean|x|).
      xw: [b, t, d] the calibration windows on which the output MSE is measured.
    """
    x_mean = jnp.mean(jnp.abs(x), axis=0)
    w2 = jnp.concatenate([_k2(getattr(module, n).kernel.get_value(), 1) for n in names], axis=1)
    w_mean = _w_mean(w2, cfg.group_size)
    graphdef, state = nnx.split(module)
    ref = _module_output(graphdef, state, xw, inv_freq, kind=kind)
    return _grid_search(lambda a: _module_candidate(graphdef, state, a, x_mean, w_mean, xw, ref, inv_freq, kind=kind,
                                                    names=names, group_size=cfg.group_size,
                                                    duo=cfg.duo_scaling), cfg)


def search_scale(x: Array, w2: Array, xs: Array, cfg: AWQConfig) -> tuple[Array, dict]:
    """The AWQ input-channel scale of one linear group.

    Args:
      x: [n, K] all captured inputs (for mean|x|).
      w2: [K, N] the group's kernels concatenated along N.
      xs: [m, K] the token subset on which the output MSE is measured.
    Returns:
      (s [K], {"alpha": best alpha or None for s = 1, "loss": its MSE, "rtn_loss": MSE of s = 1}).
    """
    x_mean = jnp.mean(jnp.abs(x), axis=0)
    w_mean = _w_mean(w2, cfg.group_size)
    ref = jnp.dot(xs, w2, precision="highest")
    return _grid_search(lambda a: _scale_candidate(a, x_mean, w_mean, w2, xs, ref, group_size=cfg.group_size,
                                                   duo=cfg.duo_scaling), cfg)


@functools.partial(jax.jit, static_argnames=("group_size", "clip_grid", "max_shrink"))
def search_clip(w2: Array, x: Array, *, group_size: int, clip_grid: int, max_shrink: float) -> Array:
    """Per (group, column) clipping of w2 [K, N] against inputs x [m, K]: the clipped [K, N]."""
    k, n = w2.shape
    wp, xp = _pad_groups(w2, x, group_size)
    g = wp.shape[0] // group_size
    wg = wp.reshape(g, group_size, n)
    xg = xp.reshape(xp.shape[0], g, group_size)
    ref = jnp.einsum("mgk,gkn->mgn", xg, wg, precision="highest")
    org_max = jnp.max(jnp.abs(wg), axis=1, keepdims=True)  # [g, 1, n]

    def err_for(shrink):
        m = org_max * (1.0 - shrink)
        wc = jnp.clip(wg, -m, m)
        wq = fake_quantize(wc.reshape(-1, n), group_size).reshape(g, group_size, n)
        out = jnp.einsum("mgk,gkn->mgn", xg, wq, precision="highest")
        return jnp.mean((out - ref) ** 2, axis=0), m  # [g, n], [g, 1, n]

    best_err, best_m = err_for(0.0)
    for i in range(1, int(max_shrink * clip_grid)):
        err, m = err_for(i / clip_grid)
        better = err < best_err
        best_err = jnp.where(better, err, best_err)
        best_m = jnp.where(better[:, None, :], m, best_m)
    return jnp.clip(wg, -best_m, best_m).reshape(-1, n)[:k]


# ----------------------------------------------------------------------------- apply


def _k2(kernel: Array, n_in: int) -> Array:
    return kernel.reshape(math.prod(kernel.shape[:n_in]), -1).astype(jnp.float32)


def _set(var: nnx.Variable, value: Array) -> None:
    var.set_value(value.astype(var.get_value().dtype))


def _scale_rows(proj, s: Array, n_in: int) -> None:
    """kernel rows (the K axis) *= s."""
    k = proj.kernel.get_value()
    _set(proj.kernel, (_k2(k, n_in) * s[:, None]).reshape(k.shape))


def _scale_cols(proj, s: Array, n_in: int) -> None:
    """kernel columns (the N axis) and bias /= s."""
    k = proj.kernel.get_value()
    _set(proj.kernel, (_k2(k, n_in) / s[None, :]).reshape(k.shape))
    if proj.bias is not None:
        b = proj.bias.get_value()
        _set(proj.bias, (b.reshape(-1).astype(jnp.float32) / s).reshape(b.shape))


def _subset(n: int, m: int, key) -> Array | slice:
    return slice(None) if not m or m >= n else jnp.sort(jax.random.choice(key, n, (m,), replace=False))


def apply_awq(model: Transformer, calib_tokens, cfg: AWQConfig = AWQConfig(), *, log=None) -> tuple[Transformer, dict]:
    """The AWQ-scaled (and clipped) float model, and a per-layer search report.

    Args:
      model: a float Transformer (left unchanged).
      calib_tokens: int [n, t] calibration windows.
      cfg: search settings.
      log: optional callable(str) for progress lines.
    Returns:
      (new float model ready for RTN, {"layers": [...], "seconds": ...}).
    """
    t0 = time.time()
    mcfg = model.cfg
    out, x, inv_freq = calibration_inputs(model, calib_tokens)
    n, t = x.shape[:2]
    key = jax.random.key(cfg.seed)
    same_heads = mcfg.num_heads == mcfg.num_kv_heads
    layers = []
    for i, block in enumerate(out.layers):
        graphdef, state = nnx.split(_tapped_copy(block))
        outs, taps = [], {name: [] for _, name in _TAPS}
        for j in range(0, n, cfg.batch_size):
            o, tp = _block_forward(graphdef, state, x[j : j + cfg.batch_size], inv_freq)
            outs.append(o)
            for name, v in tp.items():
                taps[name].append(v)
        x = jnp.concatenate(outs, axis=0)
        taps = {name: jnp.concatenate(v, axis=0) for name, v in taps.items()}
        ntok = taps["q_proj"].shape[0]
        key, k1, k2, k3 = jax.random.split(key, 4)
        idx, cidx = _subset(ntok, cfg.search_tokens, k1), _subset(ntok, cfg.clip_tokens, k2)
        wsel = jax.random.permutation(k3, n)
        attn, mlp = block.attn, block.mlp
        groups = [
            ("qkv", taps["q_proj"], [attn.q_proj, attn.k_proj, attn.v_proj], 1, block.attn_norm, "norm"),
            ("gate_up", taps["gate_proj"], [mlp.gate_proj, mlp.up_proj], 1, block.mlp_norm, "norm"),
            ("down", taps["down_proj"], [mlp.down_proj], 1, mlp.up_proj, "cols"),
        ]
        if same_heads:
            groups.insert(1, ("o", taps["o_proj"], [attn.o_proj], 2, attn.v_proj, "cols"))
        row = {"layer": i}
        scaled_inputs = {"o_proj": taps["o_proj"][cidx]}
        windows = x.shape[0] if not cfg.search_tokens else max(1, min(x.shape[0], cfg.search_tokens // t))
        inspect = {"qkv": (attn, "attn", ("q_proj", "k_proj", "v_proj")),
                   "gate_up": (mlp, "mlp", ("gate_proj", "up_proj"))} if cfg.inspect_modules else {}
        for gname, xin, projs, n_in, prev, prev_kind in groups:
            if gname in inspect:
                module, kind, names = inspect[gname]
                xw = xin.reshape(n, t, -1)[wsel[:windows]]
                s, info = search_scale_module(module, kind, names, xin, xw, inv_freq, cfg)
            else:
                w2 = jnp.concatenate([_k2(p.kernel.get_value(), n_in) for p in projs], axis=1)
                s, info = search_scale(xin, w2, xin[idx], cfg)
            row[gname] = info
            for p in projs:
                _scale_rows(p, s, n_in)
            if prev_kind == "norm":
                _set(prev.scale, prev.scale.get_value().astype(jnp.float32) / s)
            else:
                _scale_cols(prev, s, 1)
            if cfg.clip:
                xs = xin[cidx] / s[None, :]
                for p in projs:
                    scaled_inputs[_name_of(block, p)] = xs
        if cfg.clip:
            clip_targets = [(attn.v_proj, "v_proj", 1), (attn.o_proj, "o_proj", 2), (mlp.gate_proj, "gate_proj", 1),
                            (mlp.up_proj, "up_proj", 1), (mlp.down_proj, "down_proj", 1)]
            for proj, name, n_in in clip_targets:
                k = proj.kernel.get_value()
                xin = scaled_inputs[name]
                clipped = search_clip(_k2(k, n_in), xin, group_size=cfg.group_size, clip_grid=cfg.clip_grid,
                                      max_shrink=cfg.max_shrink)
                _set(proj.kernel, clipped.reshape(k.shape))
        layers.append(row)
        if log is not None:
            parts = [f"{g}: alpha={row[g]['alpha']} mse {row[g]['loss']:.3g} (rtn {row[g]['rtn_loss']:.3g})"
                     for g in ("qkv", "o", "gate_up", "down") if g in row]
            log(f"layer {i:3d}  " + "; ".join(parts))
        del taps, scaled_inputs
    return out, {"layers": layers, "seconds": round(time.time() - t0, 1), "calib_tokens": int(n * t)}


def _name_of(block, proj) -> str:
    for parent in (block.attn, block.mlp):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            if getattr(parent, name, None) is proj:
                return name
    raise ValueError("projection not found in block")
