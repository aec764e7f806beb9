"""LoRA and QLoRA as a transform over the flat parameter dict, with NNX's LoRAParam.

For every kernel whose flat name matches `LoRAConfig.targets` (a regex, full match), two
trainable factors are added:

    {module}/lora_a  [in..., r]    normal(0, 1/sqrt(fan_in))
    {module}/lora_b  [r, out...]   zeros

where `in` is the projection's contracted axes (`Projection.in_axes`: the first two for
o_proj [h, e, d], the first one otherwise) and the effective kernel is
``W + (alpha / r) * A @ B`` (reshaped to W). In the bound NNX model the targeted
projections are `LoRAProj` modules — a `Projection` variant holding the frozen kernel as a
`Param` and the factors as `nnx.LoRAParam`; the forward computes
``x W + dropout(x) A B (alpha / r)``. With QLoRA the frozen kernels are `NF4Tensor`s
(`puyu_jax.quant.nf4`), which `Projection.weight` dequantizes right before their matmul.

`LoRAAdapter` is what `puyu_jax.train.step.Trainer` takes: it holds the frozen base and
says how to initialise, shard and bind the trainable dict.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.models.config import ModelConfig
from puyu_jax.models.params import logical_axes, param_shapes, projection_in_axes
from puyu_jax.models.projection import Projection, module_at, replace_projections
from puyu_jax.models.transformer import Transformer
from puyu_jax.parallel.sharding import ShardingPlan
from puyu_jax.quant.nf4 import NF4Tensor, quantize_nf4

DEFAULT_TARGETS = r"layers/\d+/(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel"


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA hyper-parameters (QLoRA adds the NF4 block sizes)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = DEFAULT_TARGETS  # regex over flat kernel names, full match
    nf4_block: int = 64
    nf4_scale_block: int = 256

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"lora.rank={self.rank} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout={self.dropout} must be in [0, 1)")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise ValueError(f"lora.targets is not a valid regex: {e}") from e

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@functools.lru_cache(maxsize=16)
def cached_param_shapes(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    return param_shapes(cfg)  # tracing a 7B model's shapes takes seconds: once per config


@functools.lru_cache(maxsize=16)
def cached_logical_axes(cfg: ModelConfig) -> dict[str, tuple[str | None, ...]]:
    return logical_axes(cfg)


def target_kernels(cfg: ModelConfig, lora: LoRAConfig) -> list[str]:
    """Flat kernel names LoRA applies to (regex full match; only `.../kernel` 2D+ weights)."""
    rx = re.compile(lora.targets)
    names = [k for k, s in cached_param_shapes(cfg).items()
             if k.endswith("/kernel") and len(s.shape) >= 2 and rx.fullmatch(k)]
    if not names:
        raise ValueError(f"lora.targets={lora.targets!r} matches no kernel of this model "
                         f"(kernels look like 'layers/0/attn/q_proj/kernel')")
    return names


@functools.lru_cache(maxsize=16)
def cached_in_axes(cfg: ModelConfig) -> dict[str, int]:
    """Flat kernel name -> contracted axes of its `Projection`."""
    return {f"{k}/kernel": n for k, n in projection_in_axes(cfg).items()}


def lora_shapes(cfg: ModelConfig, lora: LoRAConfig, dtype=jnp.float32) -> dict[str, jax.ShapeDtypeStruct]:
    """Trainable parameter name -> ShapeDtypeStruct."""
    shapes = cached_param_shapes(cfg)
    in_axes = cached_in_axes(cfg)
    out = {}
    for k in target_kernels(cfg, lora):
        s, n = shapes[k].shape, in_axes[k]
        base = k.removesuffix("/kernel")
        out[f"{base}/lora_a"] = jax.ShapeDtypeStruct((*s[:n], lora.rank), jnp.dtype(dtype))
        out[f"{base}/lora_b"] = jax.ShapeDtypeStruct((lora.rank, *s[n:]), jnp.dtype(dtype))
    return out


def lora_axes(cfg: ModelConfig, lora: LoRAConfig) -> dict[str, tuple[str | None, ...]]:
    """Trainable parameter name -> logical axes (the kernel's, with None for the rank)."""
    axes = cached_logical_axes(cfg)
    in_axes = cached_in_axes(cfg)
    out = {}
    for k in target_kernels(cfg, lora):
        a, n = axes[k], in_axes[k]
        base = k.removesuffix("/kernel")
        out[f"{base}/lora_a"] = (*a[:n], None)
        out[f"{base}/lora_b"] = (None, *a[n:])
    return out


def init_lora(cfg: ModelConfig, lora: LoRAConfig, seed: int = 0, dtype=jnp.float32) -> dict[str, jax.Array]:
    """Fresh factors: A ~ normal(0, 1/sqrt(fan_in)), B = 0 (so the model starts as the base)."""
    return _init_lora(cfg, lora, jnp.dtype(dtype).name, seed)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_lora(cfg: ModelConfig, lora: LoRAConfig, dtype: str, seed) -> dict[str, jax.Array]:
    key = jax.random.key(seed)
    out = {}
    for i, (name, s) in enumerate(sorted(lora_shapes(cfg, lora, dtype).items())):
        if name.endswith("lora_a"):
            fan_in = math.prod(s.shape[:-1])
            out[name] = (jax.random.normal(jax.random.fold_in(key, i), s.shape, jnp.float32) / math.sqrt(fan_in)).astype(s.dtype)
        else:
            out[name] = jnp.zeros(s.shape, s.dtype)
    return out


def lora_delta(a: jax.Array, b: jax.Array, scale: float) -> jax.Array:
    """scale * A @ B with A [in..., r], B [r, out...] -> [in..., out...]."""
    r = a.shape[-1]
    d = a.reshape(-1, r).astype(jnp.float32) @ b.reshape(r, -1).astype(jnp.float32)
    return (scale * d).reshape(*a.shape[:-1], *b.shape[1:])


def merge_lora(base: dict[str, Any], trainable: dict[str, Any], lora: LoRAConfig) -> dict[str, Any]:
    """Folds the factors into the base: a plain flat dict (NF4 kernels dequantized)."""
    out = {}
    for k, w in base.items():
        if isinstance(w, NF4Tensor):
            w = w.dequantize()
        m = k.removesuffix("/kernel")
        if k.endswith("/kernel") and f"{m}/lora_a" in trainable:
            a, b = trainable[f"{m}/lora_a"], trainable[f"{m}/lora_b"]
            w = (jnp.asarray(w, jnp.float32) + lora_delta(jnp.asarray(a), jnp.asarray(b), lora.scale)).astype(w.dtype)
        out[k] = w
    return out


# ----------------------------------------------------------------------------- NNX view


def _split_spec(spec: str, n_in: int) -> tuple[str, str, str, str]:
    """einsum spec "x,w->y" -> (x letters, w input letters, w output letters, y letters)."""
    lhs, y = spec.split("->")
    x, w = lhs.split(",")
    return x, w[:n_in], w[n_in:], y


class DropoutKey(nnx.Variable):
    """A LoRA module's dropout key for one step: model state (so a scanned model stacks one key
    per layer), never a parameter."""


class LoRAProj(Projection):
    """A `Projection` with LoRA factors: y = x W (+ bias) + dropout(x) A B * scale."""

    def __init__(self, base: Projection, lora: LoRAConfig, dtype=jnp.float32):
        self.in_axes = base.in_axes
        self.kernel = base.kernel
        self.bias = base.bias
        shape = self.kernel.get_value().shape
        axes = tuple(self.kernel.get_metadata()["out_sharding"])
        n = self.in_axes
        # zeros here: built under nnx.eval_shape (no memory); init_lora gives the real values
        self.lora_a = nnx.LoRAParam(jnp.zeros((*shape[:n], lora.rank), dtype),
                                    out_sharding=(*axes[:n], None), eager_sharding=False)
        self.lora_b = nnx.LoRAParam(jnp.zeros((lora.rank, *shape[n:]), dtype),
                                    out_sharding=(None, *axes[n:]), eager_sharding=False)
        self.scale = lora.scale
        self.dropout = lora.dropout
        self.dropout_key = nnx.data(None)  # a DropoutKey, set per step by LoRAAdapter.bind when training

    def __call__(self, spec: str, x: jax.Array) -> jax.Array:
        y = super().__call__(spec, x)
        xs, w_in, w_out, ys = _split_spec(spec, self.in_axes)
        rest = "".join(c for c in xs if c not in w_in)
        h = x
        if self.dropout > 0 and self.dropout_key is not None:
            keep = jax.random.bernoulli(self.dropout_key[...], 1.0 - self.dropout, x.shape)
            h = jnp.where(keep, x / (1.0 - self.dropout), 0).astype(x.dtype)
        xa = jnp.einsum(f"{xs},{w_in}R->{rest}R", h, self.lora_a[...].astype(x.dtype))
        return y + self.scale * jnp.einsum(f"{rest}R,R{w_out}->{ys}", xa, self.lora_b[...].astype(x.dtype))


def lora_transformer(cfg: ModelConfig, lora: LoRAConfig, dtype=jnp.float32) -> Transformer:
    """The abstract (ShapeDtypeStruct) Transformer whose targeted projections are LoRAProj."""
    names = [k.removesuffix("/kernel") for k in target_kernels(cfg, lora)]
    return nnx.eval_shape(lambda: replace_projections(Transformer(cfg, rngs=nnx.Rngs(0)), names,
                                                      lambda _, proj: LoRAProj(proj, lora, dtype)))


def lora_modules(model, cfg: ModelConfig, lora: LoRAConfig) -> list[LoRAProj]:
    return [module_at(model, k.removesuffix("/kernel")) for k in target_kernels(cfg, lora)]


def bind_lora(graphdef, template: nnx.State, frozen: dict, trainable: dict):
    """The LoRA model whose frozen and trainable parameters are the given flat dicts."""
    flat = {**frozen, **trainable}
    leaves = [(path, var.replace(flat["/".join(map(str, path))])) for path, var in nnx.to_flat_state(template)]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def lora_model(cfg: ModelConfig, lora: LoRAConfig, frozen: dict, trainable: dict) -> Transformer:
    """A concrete NNX model (base + LoRA, eval mode: no dropout) for inference and tests."""
    graphdef, template = nnx.split(lora_transformer(cfg, lora), nnx.Param)
    return bind_lora(graphdef, template, frozen, trainable)


# ----------------------------------------------------------------------------- adapter


def quantize_base(cfg: ModelConfig, lora: LoRAConfig, flat: dict) -> dict:
    """The base with every LoRA-targeted kernel NF4-quantized (others unchanged)."""
    targets = set(target_kernels(cfg, lora))
    return {k: quantize_nf4(v, lora.nf4_block, lora.nf4_scale_block) if k in targets else v for k, v in flat.items()}


class LoRAAdapter:
    """LoRA (or QLoRA, `quantized=True`) for `Trainer.create(..., adapter=...)`.

    Args:
      cfg: the model config.
      lora: rank, alpha, dropout, targets.
      base: the pretrained flat dict (frozen).
      quantized: store the targeted base kernels as NF4.
      dtype: dtype of the trainable factors (fp32 master weights).
    """

    def __init__(self, cfg: ModelConfig, lora: LoRAConfig, base: dict, *, quantized: bool = False, dtype=jnp.float32):
        self.cfg, self.lora, self.quantized, self.dtype = cfg, lora, quantized, jnp.dtype(dtype)
        pd = jnp.dtype(cfg.param_dtype)
        base = {k: jnp.asarray(v, pd) for k, v in base.items()}
        self.frozen = quantize_base(cfg, lora, base) if quantized else base

    def abstract_model(self, cfg: ModelConfig) -> Transformer:
        return lora_transformer(cfg, self.lora, self.dtype)

    def trainable_shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
        return lora_shapes(self.cfg, self.lora, self.dtype)

    def trainable_axes(self) -> dict[str, tuple[str | None, ...]]:
        return lora_axes(self.cfg, self.lora)

    def frozen_shardings(self, plan: ShardingPlan) -> dict:
        """Dense frozen weights sharded like params; NF4 codes and scales replicated."""
        axes = cached_logical_axes(self.cfg)
        dense = {k: v.shape for k, v in self.frozen.items() if not isinstance(v, NF4Tensor)}
        out: dict[str, Any] = plan.shardings("params", {k: axes[k] for k in dense}, dense)
        for k, v in self.frozen.items():
            if isinstance(v, NF4Tensor):
                out[k] = jax.tree.map(lambda _: plan.replicated, v)
        return out

    def init(self, seed: int) -> dict[str, jax.Array]:
        return init_lora(self.cfg, self.lora, seed, self.dtype)

    def bind(self, graphdef, template, frozen, trainable, rng=None):
        model = bind_lora(graphdef, template, frozen, trainable)
        if rng is not None and self.lora.dropout > 0:
            for i, m in enumerate(lora_modules(model, self.cfg, self.lora)):
                m.dropout_key = DropoutKey(jax.random.fold_in(rng, i))
        return model

    def merged(self, trainable: dict) -> dict[str, np.ndarray]:
        """The full flat dict with LoRA folded in (host arrays, the base's dtype)."""
        return {k: np.asarray(v) for k, v in merge_lora(self.frozen, trainable, self.lora).items()}


def count_params(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
