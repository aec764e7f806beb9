"""One decoder-only transformer for every supported family."""

from puyu_jax.models.config import ModelConfig, RopeConfig
from puyu_jax.models.params import (
    abstract_model,
    from_flat,
    init_model,
    logical_axes,
    param_count,
    param_shapes,
    projection_in_axes,
    to_flat,
)
from puyu_jax.models.logprobs import token_logprobs
from puyu_jax.models.projection import (
    PROJECTIONS,
    PackedWeight,
    Projection,
    module_at,
    projection_names,
    replace_projections,
)
from puyu_jax.models.transformer import KVCache, Transformer, init_cache

__all__ = [
    "PROJECTIONS",
    "KVCache",
    "ModelConfig",
    "PackedWeight",
    "Projection",
    "RopeConfig",
    "Transformer",
    "abstract_model",
    "from_flat",
    "init_cache",
    "init_model",
    "logical_axes",
    "param_count",
    "module_at",
    "param_shapes",
    "projection_in_axes",
    "projection_names",
    "replace_projections",
    "to_flat",
    "token_logprobs",
]
