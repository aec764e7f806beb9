"""The model's one weight-matmul, `Projection`, and the names of the projections in a layer.

Every learned matmul of the transformer (q/k/v/o, gate/up/down, the untied head) is a
`Projection`: ``y = einsum(spec, x, W) (+ bias)`` with `W` of shape ``[in..., out...]``,
whose first `in_axes` axes are contracted (2 for o_proj ``[h, e, d]``, 1 otherwise) and
whose bias covers the output axes. Parameter-efficient and quantized variants are
subclasses or kernel types of it, not copies:

* a kernel that is a `PackedWeight` (NF4 in `puyu_jax.quant.nf4`) is dequantized right
  before the matmul, by `Projection.weight`;
* LoRA (`puyu_jax.finetune.lora.LoRAProj`) adds ``dropout(x) A B * scale`` to `__call__`;
* int4 (`puyu_jax.quant.model.Int4Proj`) replaces the matmul by a fused int4 kernel.

`replace_projections` swaps projections in a model tree by name; the names are the
flat kernel names without ``/kernel`` (``layers/0/attn/q_proj``).
"""

from __future__ import annotations

import abc

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array

#: The projections of one decoder layer, as paths below ``layers/{i}/``.
PROJECTIONS = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/o_proj",
               "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")

_INIT_STD = 0.02


def declare_param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype, init="normal"):
    """Declares one parameter: shape, dtype, initializer and logical axes in one place."""
    if init == "ones":
        value = jnp.ones(shape, dtype)
    elif init == "zeros":
        value = jnp.zeros(shape, dtype)
    else:
        value = (_INIT_STD * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class PackedWeight(abc.ABC):
    """A kernel stored in a packed / quantized form that dequantizes to `shape` (e.g. NF4).

    Subclasses provide `shape` and `dequantize(dtype) -> Array`.
    """

    shape: tuple[int, ...]

    @abc.abstractmethod
    def dequantize(self, dtype=None) -> Array:
        """The kernel as a dense `shape` array in `dtype`."""


class Projection(nnx.Module):
    """``y = einsum(spec, x, W) (+ bias)``; `W` is ``[in..., out...]`` with `in_axes` input axes.

    Args:
      rngs: initializer keys.
      shape: kernel shape ``(*in, *out)``.
      axes: logical axis names of the kernel (one per dimension).
      dtype: parameter dtype.
      in_axes: how many leading kernel axes the einsum contracts.
      bias: add a bias over the output axes ``shape[in_axes:]``.
    """

    def __init__(self, rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...], dtype, *,
                 in_axes: int = 1, bias: bool = False):
        self.in_axes = in_axes
        self.kernel = declare_param(rngs, shape, axes, dtype)
        self.bias = declare_param(rngs, shape[in_axes:], axes[in_axes:], dtype, init="zeros") if bias else None

    def weight(self, dtype) -> Array:
        """The kernel as a dense array of `dtype` (packed kernels are dequantized here)."""
        w = self.kernel.get_value()
        return w.dequantize(dtype) if isinstance(w, PackedWeight) else w.astype(dtype)

    def __call__(self, spec: str, x: Array) -> Array:
        y = jnp.einsum(spec, x, self.weight(x.dtype))
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


def projection_names(num_layers: int) -> list[str]:
    """Module paths of every layer's projections (``layers/{i}/attn/q_proj`` ...)."""
    return [f"layers/{i}/{p}" for i in range(num_layers) for p in PROJECTIONS]


def module_at(root: nnx.Module, path: str | list[str]) -> nnx.Module:
    """The sub-module of `root` at a ``/``-separated path (list indices are digits)."""
    parts = path.split("/") if isinstance(path, str) else path
    for p in parts:
        root = root[int(p)] if p.isdigit() else getattr(root, p)
    return root


def replace_projections(model: nnx.Module, names: list[str],
                        make: Callable[[str, Projection], nnx.Module]) -> nnx.Module:
    """Replaces, in place, the projection at each path in `names` by `make(name, projection)`."""
    for name in names:
        parts = name.split("/")
        parent = module_at(model, parts[:-1])
        setattr(parent, parts[-1], make(name, getattr(parent, parts[-1])))
    return model
