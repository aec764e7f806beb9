"""Meshes, logical-axis sharding rules and ZeRO / tensor-parallel presets."""

from puyu_jax.parallel.sharding import (
    MESH_AXES,
    PRESETS,
    ParallelConfig,
    ShardingRules,
    activation_rules,
    activation_sharding,
    batch_sharding,
    build_mesh,
    constrain,
    per_device_bytes,
    preset_rules,
    tree_shardings,
)

__all__ = [
    "MESH_AXES",
    "PRESETS",
    "ParallelConfig",
    "ShardingRules",
    "activation_rules",
    "activation_sharding",
    "batch_sharding",
    "build_mesh",
    "constrain",
    "per_device_bytes",
    "preset_rules",
    "tree_shardings",
]
