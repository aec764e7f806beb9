"""Building a Transformer from a config or a flat parameter dict, and back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.models.config import ModelConfig
from puyu_jax.models.projection import Projection
from puyu_jax.models.transformer import Transformer


@dataclass
class Pretrained:
    """A loaded model: config, the NNX model, its tokenizer (or None) and where it came from."""

    cfg: ModelConfig
    model: Transformer
    tokenizer: object | None  # puyu_jax.tokenizer.Tokenizer
    source: str


def _key(path: tuple) -> str:
    return "/".join(str(p) for p in path)


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """A randomly initialised model (normal(0.02) weights, unit norms)."""
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def abstract_model(cfg: ModelConfig) -> Transformer:
    """The model with ShapeDtypeStruct leaves: no memory, no compute."""
    return nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))


def param_shapes(cfg: ModelConfig) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat parameter name -> ShapeDtypeStruct."""
    _, state = nnx.split(abstract_model(cfg), nnx.Param)
    return {_key(path): var.get_value() for path, var in nnx.to_flat_state(state)}


def logical_axes(cfg: ModelConfig) -> dict[str, tuple[str | None, ...]]:
    """Flat parameter name -> logical axis names (declared once, in the model)."""
    _, state = nnx.split(abstract_model(cfg), nnx.Param)
    return {_key(path): tuple(var.get_metadata()["out_sharding"]) for path, var in nnx.to_flat_state(state)}


def projection_in_axes(cfg: ModelConfig) -> dict[str, int]:
    """Module path of every `Projection` (``layers/0/attn/o_proj``, ``lm_head``) -> its
    contracted input axes, read from the model itself."""
    return {_key(path): m.in_axes for path, m in nnx.iter_modules(abstract_model(cfg)) if isinstance(m, Projection)}


def param_count(cfg: ModelConfig) -> int:
    return sum(int(np.prod(s.shape)) for s in param_shapes(cfg).values())


def to_flat(model: Transformer) -> dict[str, jax.Array]:
    """Flat parameter dict (the checkpoint-converter contract) of a model."""
    _, state = nnx.split(model, nnx.Param)
    return {_key(path): var.get_value() for path, var in nnx.to_flat_state(state)}


def from_flat(cfg: ModelConfig, flat: Mapping[str, np.ndarray | jax.Array], *, dtype=None) -> Transformer:
    """Builds a model whose parameters are `flat` (cast to cfg.param_dtype, or `dtype`).

    Raises a KeyError naming missing or unexpected parameters, and a ValueError on
    a shape mismatch.
    """
    graphdef, state = nnx.split(abstract_model(cfg), nnx.Param)
    expected = {_key(p) for p, _ in nnx.to_flat_state(state)}
    missing, extra = sorted(expected - set(flat)), sorted(set(flat) - expected)
    if missing or extra:
        raise KeyError(f"parameter mismatch: missing {missing[:8]}, unexpected {extra[:8]}")
    target = jnp.dtype(dtype or cfg.param_dtype)
    leaves = []
    for path, var in nnx.to_flat_state(state):
        value = flat[_key(path)]
        if tuple(value.shape) != tuple(var.get_value().shape):
            raise ValueError(f"{_key(path)}: shape {tuple(value.shape)}, expected {var.get_value().shape}")
        leaves.append((path, var.replace(jnp.asarray(value, dtype=target))))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))
