"""Meshes, logical-axis sharding rules, ZeRO / tensor-parallel presets and the `ShardingPlan`."""

from puyu_jax.parallel.sharding import (
    COMPONENTS,
    MESH_AXES,
    PRESETS,
    ParallelConfig,
    ShardingPlan,
    ShardingRules,
    build_mesh,
    constrain,
    mesh_sizes,
    per_device_bytes,
    preset_rules,
)

__all__ = [
    "COMPONENTS",
    "MESH_AXES",
    "PRESETS",
    "ParallelConfig",
    "ShardingPlan",
    "ShardingRules",
    "build_mesh",
    "constrain",
    "mesh_sizes",
    "per_device_bytes",
    "preset_rules",
]
