"""Weight-only quantized models: swapping projections for `QuantProj`, saving and loading them.

`quantize_model` returns a new Transformer (the source is left untouched) whose seven
projections per layer (q, k, v, o, gate, up, down) are `QuantProj` modules holding an
`Int4Weight` (or an `Int8Weight`) as their `kernel` Param. The forward flattens the einsum's
batch axes and contracted axes to `x [m, K]`, calls `puyu_jax.kernels.int4_matmul` /
`int8_matmul` (Pallas on GPU / TPU, the plain-JAX reference on CPU) and reshapes back to the
einsum's output. Biases stay float; norms stay float. Embeddings and lm_head stay float when
quantizing; a GGUF loaded natively (`puyu_jax.quant.gguf`) keeps its quantized embedding as a
`QuantEmbed` (the lookup dequantizes only the gathered rows; the tied lm_head is a quantized
matmul).

A quantized directory:

    <dir>/quant.yaml          model config, quantization settings, the quantized kernel names
    <dir>/model.safetensors   flat parameters; a quantized kernel `K` is `K/qweight`, `K/scales` and
                          `K/zeros` or `K/mins` (int4; neither: symmetric) — an int8 `K/qweight`
                          is int8; the group size is rows of qweight / rows of scales
    <dir>/tokenizer/          when the source had a tokenizer

`puyu_jax.pretrained.load_pretrained(dir)` recognises it (through `load_quantized`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx

from puyu_jax.kernels.int4_matmul import int4_matmul, int8_matmul, w8a8_matmul
from puyu_jax.kernels.target import kernel_backend
from puyu_jax.models.config import ModelConfig
from puyu_jax.models.params import abstract_model, param_shapes
from puyu_jax.models.projection import PROJECTIONS, Projection
from puyu_jax.models.transformer import Transformer
from puyu_jax.quant.int4 import Int4Weight, Int8Weight, QuantWeight, quantize_int4, quantize_int8

QUANT_YAML = "quant.yaml"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "puyu-int4"
METHODS = ("rtn", "awq", "gptq", "smoothquant")
EMBED = "embed/embedding"
_QUANT_FIELDS = ("qweight", "scales", "zeros", "mins")


def n_in_axes(kernel_name: str) -> int:
    """Contracted (input) axes of a kernel: 2 for o_proj [h, e, d], else 1."""
    return 2 if kernel_name.endswith("o_proj/kernel") else 1


def _block_n(n: int) -> int:
    """The largest power-of-two N tile (<= 128) dividing N (SmolLM2's k_proj has N = 192)."""
    b = 128
    while b > 1 and n % b:
        b //= 2
    return b


def quant_matmul(x2: jax.Array, w: QuantWeight, impl: str = "auto") -> jax.Array:
    """`x2 [m, K] @ W [K, N]` for a quantized weight (x2 zero-padded to W's padded K here)."""
    pad = w.padded_in_features - w.in_features
    if pad:
        x2 = jnp.pad(x2, ((0, 0), (0, pad)))
    kwargs = {} if impl == "reference" else {"block_n": _block_n(w.out_features)}
    if isinstance(w, Int8Weight) and w.act_bits == 8:
        return w8a8_matmul(x2, w.qweight, w.scales, impl=impl, **kwargs)
    if isinstance(w, Int8Weight):
        return int8_matmul(x2, w.qweight, w.scales, group_size=w.group_size, impl=impl, **kwargs)
    return int4_matmul(x2, w.qweight, w.scales, w.zeros, mins=w.mins, group_size=w.group_size, impl=impl, **kwargs)


def _tensor_axis(w: QuantWeight) -> tuple[Any, int]:
    """The mesh the weight is placed on and its `tensor` axis size (None, 1 without one)."""
    try:
        mesh = jax.typeof(w.qweight).sharding.mesh
    except (AttributeError, TypeError, ValueError):  # not a jax array / no sharding in its type
        return None, 1
    if "tensor" not in getattr(mesh, "axis_names", ()):
        return None, 1
    return mesh, mesh.shape["tensor"]


def sharded_quant_matmul(x2: jax.Array, w: QuantWeight, impl: str = "auto") -> jax.Array:
    """`quant_matmul`, run per device under `jax.shard_map` when the weight lives on a mesh with a
    `tensor` axis (tensor-parallel serving) and the kernel is a Pallas one: XLA cannot partition
    a Mosaic / Triton call by itself. Column-parallel: every device multiplies the (replicated)
    activations by its N-slice of the weight (each array of a quantized weight is `[.., N]`; the
    engine places them so, `quant_weight_shardings`), the output is N-sharded. Without a mesh, on the reference path, or when the first output
    dimension (heads, kv heads, mlp, ...) does not divide over `tensor`, it is `quant_matmul`."""
    mesh, tp = _tensor_axis(w)
    pallas = impl == "pallas" or (impl == "auto" and kernel_backend() != "cpu")
    first_out = w.shape[w.n_in]
    if mesh is None or tp == 1 or not pallas or first_out % tp:
        return quant_matmul(x2, w, impl)
    local_shape = (*w.shape[: w.n_in], first_out // tp, *w.shape[w.n_in + 1 :])
    cols = jax.sharding.PartitionSpec(None, "tensor")

    def body(x2, w):
        return quant_matmul(x2, dataclasses.replace(w, shape=local_shape), impl)

    rep = jax.sharding.PartitionSpec()
    specs = (rep, jax.tree.map(lambda a: cols if a.shape[-1:] == (w.out_features,) else rep, w))
    # check_vma=False: a Pallas call (interpret mode too) does not track varying manual axes
    return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=cols, check_vma=False)(x2, w)


def quant_weight_shardings(w: QuantWeight, mesh) -> QuantWeight:
    """Where a quantized weight's arrays live under tensor-parallel serving: split over `tensor`
    along N (their last axis, the output features) exactly as `sharded_quant_matmul` multiplies
    them, so each device holds 1/tp of the weight; replicated where the first output dimension
    does not divide (the matmul then runs unsplit too). A pytree of NamedShardings like `w`."""
    tp = mesh.shape["tensor"]
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    if tp == 1 or w.shape[w.n_in] % tp:
        return jax.tree.map(lambda a: rep, w)
    cols = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "tensor"))
    return jax.tree.map(lambda a: cols if a.shape[-1:] == (w.out_features,) else rep, w)


class QuantProj(nnx.Module):
    """A drop-in for the model's `Projection`: y = x @ dequant(kernel) (+ bias), fused in the quantized matmul."""

    def __init__(self, weight: QuantWeight, bias: nnx.Param | None = None, impl: str = "auto"):
        self.kernel = nnx.Param(weight)
        self.bias = bias
        self.impl = impl

    def __call__(self, spec: str, x: jax.Array) -> jax.Array:
        w: QuantWeight = self.kernel.get_value()
        lhs, ys = spec.split("->")
        xs, ws = lhs.split(",")
        n = w.n_in
        batch = xs[: len(xs) - n]
        if xs[len(xs) - n :] != ws[:n] or ys != batch + ws[n:]:
            raise ValueError(f"QuantProj needs 'batch+in, in+out -> batch+out', got {spec!r}")
        lead = x.shape[: x.ndim - n]
        y = sharded_quant_matmul(x.reshape(-1, w.in_features), w, self.impl)
        y = y.reshape(*lead, *w.shape[n:])
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class QuantEmbed(nnx.Module):
    """A drop-in for the model's `Embed` holding the table transposed as a quantized `[D, V]` kernel.

    The lookup dequantizes only the gathered columns; `attend` (the tied lm_head) is the
    quantized matmul `x [.., D] @ W [D, V]`.
    """

    def __init__(self, weight: QuantWeight, impl: str = "auto"):
        if weight.n_in != 1 or len(weight.shape) != 2:
            raise ValueError(f"QuantEmbed needs a [D, V] kernel, got shape {weight.shape} n_in {weight.n_in}")
        self.embedding = nnx.Param(weight)
        self.impl = impl

    def __call__(self, tokens: jax.Array) -> jax.Array:
        w: QuantWeight = self.embedding.get_value()
        cols = w.dequantize_columns(tokens.reshape(-1))  # [D, b*t]
        return cols.T.reshape(*tokens.shape, w.shape[0])

    def attend(self, x: jax.Array) -> jax.Array:
        w: QuantWeight = self.embedding.get_value()
        return quant_matmul(x.reshape(-1, w.in_features), w, self.impl).reshape(*x.shape[:-1], w.out_features)


# ----------------------------------------------------------------------------- model transforms


def _module_at(root, path: list[str]):
    for p in path:
        root = root[int(p)] if p.isdigit() else getattr(root, p)
    return root


def target_kernels(cfg: ModelConfig) -> list[str]:
    """Flat names of the kernels that int4 quantization replaces (every layer's seven projections)."""
    return [f"layers/{i}/{m}/kernel" for i in range(cfg.num_layers) for m in PROJECTIONS]


def shallow_copy(model: Transformer) -> Transformer:
    """A new module tree (new Variables) sharing the immutable arrays of `model`: no array copies."""
    return nnx.clone(model)


def is_quantized(model) -> bool:
    """Whether any projection (or the embedding) of `model` holds quantized weights."""
    return any(isinstance(m, (QuantProj, QuantEmbed)) for _, m in nnx.iter_modules(model))


def install_weights(model: Transformer, weights: dict[str, QuantWeight], impl: str = "auto") -> Transformer:
    """Swaps, in place, the modules of `model` named by flat kernel names (`layers/3/mlp/up_proj/kernel`,
    `embed/embedding`, `lm_head/kernel`) for quantized ones holding `weights`; biases are kept."""
    for name, w in weights.items():
        path = name.split("/")[:-1]
        parent = _module_at(model, path[:-1])
        old = getattr(parent, path[-1])
        if name == EMBED:
            setattr(parent, path[-1], QuantEmbed(w, impl))
            continue
        if not name.endswith("/kernel"):
            raise ValueError(f"{name}: only kernels and {EMBED} can be quantized")
        shape = tuple(old.kernel.get_value().shape)
        if tuple(w.shape) != shape:
            raise ValueError(f"{name}: quantized shape {w.shape} does not match the model's {shape}")
        setattr(parent, path[-1], QuantProj(w, old.bias, impl))
    return model


def quantize_model(
    model: Transformer,
    method: str = "rtn",
    group_size: int = 128,
    calib_tokens: np.ndarray | None = None,
    *,
    awq_config: Any = None,
    impl: str = "auto",
    report: dict | None = None,
    bits: int = 4,
    kind: str = "zero",
    gptq_config: Any = None,
) -> Transformer:
    """A new model whose projections hold int4 weights (the source model is unchanged).

    Args:
      model: a float Transformer.
      method: "rtn" (round-to-nearest per group), "awq" (activation-aware scaling and
        clipping, then RTN; needs `calib_tokens`), "gptq" (error-compensating rounding against
        the calibration inputs' Hessians; needs `calib_tokens`) or "smoothquant" (W8A8: activation outliers
        moved into the weights by per-channel factors folded into the norms / up_proj, then
        per-channel int8 weights and per-token int8 activations; needs `calib_tokens`).
      group_size: rows of K per quantization group.
      calib_tokens: int [n, t] calibration token windows (AWQ, GPTQ, SmoothQuant); see
        `puyu_jax.quant.awq.calibration_tokens`.
      awq_config: an `AWQConfig` overriding the AWQ search settings (its group_size is
        replaced by `group_size`); for smoothquant, a dict of `apply_smoothquant` options.
      impl: `int4_matmul` implementation for the forward ("auto", "pallas", "reference").
      report: optional dict filled with AWQ's / GPTQ's per-layer results.
      bits: 4 (`Int4Weight`) or 8 (`Int8Weight`, symmetric, RTN only; group_size 0 =
        per output channel).
      kind: int4 kind: "zero" (integer zero points), "min" (float minimums) or "sym".
      gptq_config: a `GPTQConfig` overriding the GPTQ settings (its group_size and kind are
        replaced by `group_size` and `kind`).
    Returns:
      The quantized Transformer.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if is_quantized(model):
        raise ValueError("the model is already quantized")
    if bits not in (4, 8):
        raise ValueError(f"bits={bits}: expected 4 or 8")
    if method == "smoothquant":
        bits = 8
    if bits == 8 and method not in ("rtn", "smoothquant"):
        raise ValueError(f"bits=8 is rtn (W8A16) or smoothquant (W8A8), not {method!r}")
    if bits == 4:
        from puyu_jax.quant.int4 import _check_kind

        _check_kind(kind)
    if method == "gptq":
        from puyu_jax.quant.gptq import GPTQConfig, apply_gptq

        if calib_tokens is None:
            raise ValueError("method='gptq' needs calib_tokens (see puyu_jax.quant.awq.calibration_tokens)")
        gcfg = dataclasses.replace(gptq_config or GPTQConfig(), group_size=group_size, kind=kind)
        weights, gptq_report = apply_gptq(model, calib_tokens, gcfg)
        if report is not None:
            report.update(gptq_report)
        return install_weights(shallow_copy(model), weights, impl)
    if method == "smoothquant":
        from puyu_jax.quant.smoothquant import apply_smoothquant

        if calib_tokens is None:
            raise ValueError("method='smoothquant' needs calib_tokens (see puyu_jax.quant.awq.calibration_tokens)")
        model, sq_report = apply_smoothquant(model, calib_tokens, **(awq_config or {}))
        if report is not None:
            report.update(sq_report)
    if method == "awq":
        from puyu_jax.quant.awq import AWQConfig, apply_awq

        if calib_tokens is None:
            raise ValueError("method='awq' needs calib_tokens (see puyu_jax.quant.awq.calibration_tokens)")
        acfg = dataclasses.replace(awq_config or AWQConfig(), group_size=group_size)
        model, awq_report = apply_awq(model, calib_tokens, acfg)
        if report is not None:
            report.update(awq_report)
    out = shallow_copy(model)
    weights = {}
    for name in target_kernels(model.cfg):
        proj = _module_at(out, name.split("/")[:-1])
        k = proj.kernel.get_value()
        if method == "smoothquant":
            weights[name] = quantize_int8(k, n_in_axes(name), 0, act_bits=8)
        elif bits == 8:
            weights[name] = quantize_int8(k, n_in_axes(name), group_size)
        else:
            weights[name] = quantize_int4(k, n_in_axes(name), group_size, kind)
    return install_weights(out, weights, impl)


def dequantized_model(model: Transformer) -> Transformer:
    """A float model whose kernels are the quantized model's dequantized weights (for comparisons)."""
    from puyu_jax.models.transformer import Embed

    out = shallow_copy(model)
    if isinstance(out.embed, QuantEmbed):
        w = out.embed.embedding.get_value()
        fp = nnx.eval_shape(lambda: Embed(nnx.Rngs(0), w.shape[1], w.shape[0], jnp.float32))
        fp.embedding.set_value(w.dequantize(jnp.dtype(model.cfg.param_dtype)).T)
        out.embed = fp
    names = target_kernels(model.cfg) + ([] if model.cfg.tie_word_embeddings else ["lm_head/kernel"])
    for name in names:
        path = name.split("/")[:-1]
        parent = _module_at(out, path[:-1])
        proj = getattr(parent, path[-1])
        if not isinstance(proj, QuantProj):
            continue
        w: QuantWeight = proj.kernel.get_value()
        has_bias = proj.bias is not None
        fp = nnx.eval_shape(lambda: Projection(nnx.Rngs(0), w.shape, (None,) * len(w.shape), jnp.float32,
                                               in_axes=w.n_in, bias=has_bias))
        fp.kernel.set_value(w.dequantize(jnp.dtype(model.cfg.param_dtype)))
        if has_bias:
            fp.bias.set_value(proj.bias.get_value())
        setattr(parent, path[-1], fp)
    return out


def weight_nbytes(model: Transformer) -> dict[str, int]:
    """Bytes of the quantized weights, of every other (float) parameter, and their total."""
    q = f = 0
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        v = var.get_value()
        if isinstance(v, (Int4Weight, Int8Weight)):
            q += v.nbytes
        else:
            f += int(v.size) * v.dtype.itemsize
    return {"quantized": q, "float": f, "total": q + f}


# ----------------------------------------------------------------------------- save / load


def _flat_params(model: Transformer) -> dict[str, Any]:
    return {"/".join(map(str, p)): var.get_value() for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def save_quantized(
    model: Transformer,
    directory: str | os.PathLike,
    *,
    tokenizer=None,
    method: str = "rtn",
    extra: dict | None = None,
) -> Path:
    """Writes a quantized model directory (see the module docstring).

    Args:
      model: a model returned by `quantize_model`.
      directory: output directory (created).
      tokenizer: a `puyu_jax.tokenizer.Tokenizer` to save beside the weights.
      method: recorded in quant.yaml.
      extra: more settings to record under `quant:` (calibration source, sizes...).
    """
    from safetensors.numpy import save_file

    if not is_quantized(model):
        raise ValueError("save_quantized expects a model returned by quantize_model")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, np.ndarray] = {}
    kernels, group_size, bits, act_bits = [], None, None, 16
    for name, v in _flat_params(model).items():
        if isinstance(v, (Int4Weight, Int8Weight)):
            kernels.append(name)
            group_size, bits = v.group_size, v.bits
            act_bits = getattr(v, "act_bits", 16)
            for f in _QUANT_FIELDS:
                if getattr(v, f, None) is not None:
                    tensors[f"{name}/{f}"] = np.asarray(getattr(v, f))
        else:
            tensors[name] = np.asarray(v)
    save_file(tensors, str(d / WEIGHTS_FILE))
    meta = {
        "format": FORMAT,
        "model": dataclasses.asdict(model.cfg),
        "quant": {
            "bits": bits,
            "act_bits": act_bits,
            "method": method,
            "group_size": group_size,
            "layout": "groups along K; int4: qweight uint8 [K/2, N] low nibble = row 2i, (q - zeros) * scales, "
                      "q * scales + mins or (q - 8) * scales; int8: qweight int8 [K, N], q * scales",
            **(extra or {}),
            "kernels": kernels,
        },
    }
    (d / QUANT_YAML).write_text(yaml.safe_dump(meta, sort_keys=False))
    if tokenizer is not None:
        tokenizer.save(d / "tokenizer")
    return d


def is_quantized_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / QUANT_YAML).is_file()


def read_quant_yaml(path: str | os.PathLike) -> dict:
    meta = yaml.safe_load((Path(path) / QUANT_YAML).read_text())
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}/{QUANT_YAML}: not a {FORMAT} directory")
    return meta


def kernel_shape(name: str, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The `[K.., N..]` kernel shape of a parameter: the embedding table [V, D] is kept as [D, V]."""
    return tuple(param_shape)[::-1] if name == EMBED else tuple(param_shape)


def assemble_model(cfg: ModelConfig, floats, weights: dict[str, QuantWeight], impl: str = "auto",
                   source: str = "") -> Transformer:
    """A model of `cfg` from float parameters (flat name -> array) and quantized weights
    (flat kernel name -> weight); every parameter must come from one of the two."""
    model = abstract_model(cfg)  # shapes only; every leaf is replaced below
    dtype = jnp.dtype(cfg.param_dtype)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = "/".join(map(str, path))
        if name in weights:
            continue
        if name not in floats:
            raise KeyError(f"{source}: missing parameter {name!r}")
        var.set_value(jnp.asarray(floats[name], dtype))
    return install_weights(model, weights, impl)


def quant_weight(name: str, shape: tuple[int, ...], qweight, scales, zeros=None, mins=None) -> QuantWeight:
    """An `Int4Weight` (uint8 qweight) or `Int8Weight` (int8) for the kernel `name` of `shape`,
    its group size read off the arrays; a clear error when they do not fit the shape."""
    n_in = n_in_axes(name)
    k, n = math.prod(shape[:n_in]), math.prod(shape[n_in:])
    rows = 2 * qweight.shape[0] if qweight.dtype == jnp.uint8 else qweight.shape[0]
    if qweight.ndim != 2 or scales.ndim != 2 or rows < k or qweight.shape[1] != n or rows % scales.shape[0]:
        raise ValueError(f"{name}: qweight {qweight.shape} / scales {scales.shape} do not fit kernel {shape}")
    group_size = rows // scales.shape[0]
    if qweight.dtype == jnp.int8:
        if zeros is not None or mins is not None:
            raise ValueError(f"{name}: int8 weights are symmetric (no zeros / mins)")
        return Int8Weight(qweight, scales, shape, n_in, group_size)
    if qweight.dtype != jnp.uint8:
        raise ValueError(f"{name}: qweight dtype {qweight.dtype} is neither uint8 (int4) nor int8")
    return Int4Weight(qweight, scales, zeros, shape, n_in, group_size, mins)


def load_quantized(directory: str | os.PathLike, *, dtype: str | None = None, impl: str = "auto"):
    """Loads a directory written by `save_quantized`.

    Args:
      directory: the quantized directory.
      dtype: compute dtype override (float32 / bfloat16).
      impl: `int4_matmul` / `int8_matmul` implementation.

    Returns:
      `puyu_jax.models.params.Pretrained` (cfg, quantized model, tokenizer or None, source).
    """
    from safetensors.numpy import load_file

    from puyu_jax.checkpoint import model_config_from_dict
    from puyu_jax.models.params import Pretrained

    d = Path(directory)
    meta = read_quant_yaml(d)
    cfg = model_config_from_dict(meta["model"])
    if dtype:
        cfg = cfg.replace(dtype=dtype)
    kernels = set(meta["quant"]["kernels"])
    tensors = load_file(str(d / WEIGHTS_FILE))
    shapes = param_shapes(cfg)
    weights = {}
    for name in sorted(kernels):
        if name not in shapes:
            raise KeyError(f"{d / QUANT_YAML}: quantized kernel {name!r} is not a parameter of this model")
        arrays = {f: jnp.asarray(tensors[f"{name}/{f}"]) for f in _QUANT_FIELDS if f"{name}/{f}" in tensors}
        weights[name] = quant_weight(name, kernel_shape(name, shapes[name].shape), **arrays)
        if isinstance(weights[name], Int8Weight) and int(meta["quant"].get("act_bits", 16)) == 8:
            weights[name] = weights[name].replace(act_bits=8)
    floats = {k: v for k, v in tensors.items() if k in shapes and k not in kernels}
    model = assemble_model(cfg, floats, weights, impl, source=str(d / WEIGHTS_FILE))
    tokenizer = None
    if (d / "tokenizer").is_dir():
        from puyu_jax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(d / "tokenizer")
    return Pretrained(cfg, model, tokenizer, str(directory))
