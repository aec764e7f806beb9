"""Int4 weight-only models: swapping projections for `Int4Proj`, saving and loading them.

`quantize_model` returns a new Transformer (the source is left untouched) whose seven
projections per layer (q, k, v, o, gate, up, down) are `Int4Proj` modules holding an
`Int4Weight` as their `kernel` Param. The forward flattens the einsum's batch axes and
contracted axes to `x [m, K]`, calls `puyu_jax.kernels.int4_matmul` (Pallas on GPU / TPU,
the plain-JAX reference on CPU) and reshapes back to the einsum's output. Biases stay float;
embeddings, norms and lm_head stay float.

A quantized directory:

    <dir>/quant.yaml          model config, quantization settings, the quantized kernel names
    <dir>/model.safetensors   flat parameters; an int4 kernel `K` is `K/qweight`, `K/scales`, `K/zeros`
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

from puyu_jax.kernels.int4_matmul import int4_matmul
from puyu_jax.models.config import ModelConfig
from puyu_jax.models.params import abstract_model
from puyu_jax.models.projection import Projection
from puyu_jax.models.transformer import Transformer
from puyu_jax.quant.int4 import Int4Weight, quantize_int4

QUANT_YAML = "quant.yaml"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "puyu-int4"
METHODS = ("rtn", "awq")
PROJECTIONS = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")
_INT4_FIELDS = ("qweight", "scales", "zeros")


def n_in_axes(kernel_name: str) -> int:
    """Contracted (input) axes of a kernel: 2 for o_proj [h, e, d], else 1."""
    return 2 if kernel_name.endswith("o_proj/kernel") else 1


def _block_n(n: int) -> int:
    """The largest power-of-two N tile (<= 128) dividing N (SmolLM2's k_proj has N = 192)."""
    b = 128
    while b > 1 and n % b:
        b //= 2
    return b


class Int4Proj(nnx.Module):
    """A drop-in for the model's `_Proj`: y = x @ dequant(kernel) (+ bias), fused in `int4_matmul`."""

    def __init__(self, weight: Int4Weight, bias: nnx.Param | None = None, impl: str = "auto"):
        self.kernel = nnx.Param(weight)
        self.bias = bias
        self.impl = impl

    def __call__(self, spec: str, x: jax.Array) -> jax.Array:
        w: Int4Weight = self.kernel.get_value()
        lhs, ys = spec.split("->")
        xs, ws = lhs.split(",")
        n = w.n_in
        batch = xs[: len(xs) - n]
        if xs[len(xs) - n :] != ws[:n] or ys != batch + ws[n:]:
            raise ValueError(f"Int4Proj needs 'batch+in, in+out -> batch+out', got {spec!r}")
        lead = x.shape[: x.ndim - n]
        x2 = x.reshape(-1, w.in_features)
        pad = w.padded_in_features - w.in_features
        if pad:
            x2 = jnp.pad(x2, ((0, 0), (0, pad)))
        kwargs = {} if self.impl == "reference" else {"block_n": _block_n(w.out_features)}
        y = int4_matmul(x2, w.qweight, w.scales, w.zeros, group_size=w.group_size, impl=self.impl, **kwargs)
        y = y.reshape(*lead, *w.shape[n:])
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


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
    """Whether any projection of `model` holds int4 weights."""
    return any(isinstance(m, Int4Proj) for _, m in nnx.iter_modules(model))


def quantize_model(
    model: Transformer,
    method: str = "rtn",
    group_size: int = 128,
    calib_tokens: np.ndarray | None = None,
    *,
    awq_config: Any = None,
    impl: str = "auto",
    report: dict | None = None,
) -> Transformer:
    """A new model whose projections hold int4 weights (the source model is unchanged).

    Args:
      model: a float Transformer.
      method: "rtn" (round-to-nearest per group) or "awq" (activation-aware scaling and
        clipping, then RTN; needs `calib_tokens`).
      group_size: rows of K per quantization group.
      calib_tokens: int [n, t] calibration token windows (AWQ only); see
        `puyu_jax.quant.awq.calibration_tokens`.
      awq_config: an `AWQConfig` overriding the AWQ search settings (its group_size is
        replaced by `group_size`).
      impl: `int4_matmul` implementation for the forward ("auto", "pallas", "reference").
      report: optional dict filled with AWQ's per-layer search results.
    Returns:
      The quantized Transformer.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {METHODS}")
    if is_quantized(model):
        raise ValueError("the model is already quantized")
    if method == "awq":
        from puyu_jax.quant.awq import AWQConfig, apply_awq

        if calib_tokens is None:
            raise ValueError("method='awq' needs calib_tokens (see puyu_jax.quant.awq.calibration_tokens)")
        acfg = dataclasses.replace(awq_config or AWQConfig(), group_size=group_size)
        model, awq_report = apply_awq(model, calib_tokens, acfg)
        if report is not None:
            report.update(awq_report)
    out = shallow_copy(model)
    for name in target_kernels(model.cfg):
        path = name.split("/")[:-1]
        parent = _module_at(out, path[:-1])
        proj = getattr(parent, path[-1])
        weight = quantize_int4(proj.kernel.get_value(), n_in_axes(name), group_size)
        setattr(parent, path[-1], Int4Proj(weight, proj.bias, impl))
    return out


def dequantized_model(model: Transformer) -> Transformer:
    """A float model whose kernels are the int4 model's dequantized weights (for comparisons)."""
    out = shallow_copy(model)
    for name in target_kernels(model.cfg):
        path = name.split("/")[:-1]
        parent = _module_at(out, path[:-1])
        proj = getattr(parent, path[-1])
        if not isinstance(proj, Int4Proj):
            continue
        w: Int4Weight = proj.kernel.get_value()
        has_bias = proj.bias is not None
        fp = nnx.eval_shape(lambda: Projection(nnx.Rngs(0), w.shape, (None,) * len(w.shape), jnp.float32,
                                               in_axes=w.n_in, bias=has_bias))
        fp.kernel.set_value(w.dequantize(jnp.dtype(model.cfg.param_dtype)))
        if has_bias:
            fp.bias.set_value(proj.bias.get_value())
        setattr(parent, path[-1], fp)
    return out


def int4_nbytes(model: Transformer) -> dict[str, int]:
    """Bytes of the int4 kernels and of every other (float) parameter."""
    q = f = 0
    for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        v = var.get_value()
        if isinstance(v, Int4Weight):
            q += v.nbytes
        else:
            f += int(v.size) * v.dtype.itemsize
    return {"int4": q, "float": f}


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
    kernels, group_size = [], None
    for name, v in _flat_params(model).items():
        if isinstance(v, Int4Weight):
            kernels.append(name)
            group_size = v.group_size
            for f in _INT4_FIELDS:
                tensors[f"{name}/{f}"] = np.asarray(getattr(v, f))
        else:
            tensors[name] = np.asarray(v)
    save_file(tensors, str(d / WEIGHTS_FILE))
    meta = {
        "format": FORMAT,
        "model": dataclasses.asdict(model.cfg),
        "quant": {
            "bits": 4,
            "method": method,
            "group_size": group_size,
            "layout": "asymmetric per group along K; qweight uint8 [K/2, N] low nibble = row 2i",
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


def load_quantized(directory: str | os.PathLike, *, dtype: str | None = None, impl: str = "auto"):
    """Loads a directory written by `save_quantized`.

    Args:
      directory: the quantized directory.
      dtype: compute dtype override (float32 / bfloat16).
      impl: `int4_matmul` implementation.

    Returns:
      `puyu_jax.models.params.Pretrained` (cfg, int4 model, tokenizer or None, source).
    """
    from safetensors.numpy import load_file

    from puyu_jax.checkpoint import model_config_from_dict
    from puyu_jax.models.params import Pretrained

    d = Path(directory)
    meta = read_quant_yaml(d)
    cfg = model_config_from_dict(meta["model"])
    if dtype:
        cfg = cfg.replace(dtype=dtype)
    q = meta["quant"]
    group_size, kernels = int(q["group_size"]), set(q["kernels"])
    tensors = load_file(str(d / WEIGHTS_FILE))
    model = abstract_model(cfg)  # shapes only; every leaf is replaced below
    dtype = jnp.dtype(cfg.param_dtype)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = "/".join(map(str, path))
        if name in kernels:
            continue
        if name not in tensors:
            raise KeyError(f"{d / WEIGHTS_FILE}: missing parameter {name!r}")
        var.set_value(jnp.asarray(tensors[name], dtype))
    for name in sorted(kernels):
        p = name.split("/")[:-1]
        parent = _module_at(model, p[:-1])
        proj = getattr(parent, p[-1])
        shape = tuple(proj.kernel.get_value().shape)
        w = Int4Weight(*(jnp.asarray(tensors[f"{name}/{f}"]) for f in _INT4_FIELDS),
                       shape=shape, n_in=n_in_axes(name), group_size=group_size)
        k = math.prod(shape[: w.n_in])
        if w.padded_in_features < k or w.qweight.shape[1] != w.out_features:
            raise ValueError(f"{name}: packed shape {w.qweight.shape} does not fit kernel {shape}")
        setattr(parent, p[-1], Int4Proj(w, proj.bias, impl))
    tokenizer = None
    if (d / "tokenizer").is_dir():
        from puyu_jax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(d / "tokenizer")
    return Pretrained(cfg, model, tokenizer, str(directory))
