"""Meshes and sharding as data: a mesh config, logical-axis rule tables, ZeRO presets.

The model names only logical axes (`vocab`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`, `norm`; activations `batch`, `length`). A `ShardingRules` maps
each logical axis to mesh axes (`data`, `fsdp`, `tensor`, `sequence`). A preset
is a pair of rule tables — one for parameters, one for gradients and optimizer
state — which is how ZeRO stages differ:

| preset  | params             | grads + optimizer state | batch            |
|---------|--------------------|-------------------------|------------------|
| dp      | replicated         | replicated              | data, fsdp       |
| zero1   | replicated         | opt state over fsdp (grads all-reduced) | data, fsdp |
| zero2   | replicated         | over fsdp (reduce-scatter) | data, fsdp    |
| zero3   | over fsdp          | over fsdp               | data, fsdp       |
| tp      | heads/mlp/vocab over tensor | same           | data, fsdp       |
| fsdp_tp | fsdp + tensor      | fsdp + tensor           | data, fsdp       |
| hybrid  | over fsdp = GPUs of one node, replicated across nodes (`data`) | same | data, fsdp |

Hybrid ZeRO (InternLM-Train) is zero3 on a mesh whose `fsdp` axis spans one node's
fast interconnect and whose `data` axis spans nodes: `build_mesh` orders devices so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
PRESETS = ("dp", "zero1", "zero2", "zero3", "tp", "fsdp_tp", "hybrid")
LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "batch", "length")


@dataclass(frozen=True)
class ParallelConfig:
    """How a run is laid out over devices.

    Mesh axis sizes: -1 means "all remaining devices" (at most one axis may be -1).
    For `hybrid`, `devices_per_node` sets the fsdp size (default: local device count).
    """

    preset: str = "dp"
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    sequence: int = 1
    devices_per_node: int = 0

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"parallel.preset={self.preset!r}: expected one of {PRESETS}")
        sizes = [self.data, self.fsdp, self.tensor, self.sequence]
        if sum(s == -1 for s in sizes) > 1 or any(s == 0 or s < -1 for s in sizes):
            raise ValueError(f"mesh sizes {sizes}: each must be positive, at most one may be -1")


@dataclass(frozen=True)
class ShardingRules:
    """Logical axis name -> mesh axis (or tuple of axes, or None for replicated)."""

    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...]

    def __post_init__(self):
        seen: dict[str, str] = {}
        for logical, mesh_axes in self.rules:
            if logical not in LOGICAL_AXES:
                raise ValueError(f"unknown logical axis {logical!r}; known: {LOGICAL_AXES}")
            for ax in _as_tuple(mesh_axes):
                if ax not in MESH_AXES:
                    raise ValueError(f"{logical!r} -> unknown mesh axis {ax!r}; known: {MESH_AXES}")

    def mesh_axes(self, logical: str | None):
        return dict(self.rules).get(logical) if logical else None

    def spec(self, logical_axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
        """PartitionSpec for an array; a dimension not divisible by its mesh axes stays
        replicated, and a mesh axis is used at most once per array."""
        used: set[str] = set()
        out = []
        for name, dim in zip(logical_axes, shape):
            axes = tuple(a for a in _as_tuple(self.mesh_axes(name)) if a not in used and mesh.shape[a] > 1)
            size = math.prod(mesh.shape[a] for a in axes)
            if not axes or dim % size:
                out.append(None)
                continue
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else axes)
        return P(*out)


def _as_tuple(x) -> tuple[str, ...]:
    if x is None:
        return ()
    return (x,) if isinstance(x, str) else tuple(x)


_BATCH = (("batch", ("data", "fsdp")), ("length", "sequence"))
_TP = (("heads", "tensor"), ("kv_heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))
_FSDP = (("embed", "fsdp"),)


def preset_rules(preset: str) -> tuple[ShardingRules, ShardingRules]:
    """(parameter rules, gradient + optimizer-state rules) for a preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    replicated = ShardingRules(_BATCH)
    sharded = ShardingRules(_BATCH + _FSDP)
    tp = ShardingRules(_BATCH + _TP)
    fsdp_tp = ShardingRules(_BATCH + _FSDP + _TP)
    return {
        "dp": (replicated, replicated),
        "zero1": (replicated, sharded),
        "zero2": (replicated, sharded),
        "zero3": (sharded, sharded),
        "hybrid": (sharded, sharded),
        "tp": (tp, tp),
        "fsdp_tp": (fsdp_tp, fsdp_tp),
    }[preset]


def activation_rules(preset: str) -> ShardingRules:
    """Rules for activations: batch over (data, fsdp); heads / mlp over tensor under TP."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    return ShardingRules(_BATCH + (_TP if preset in ("tp", "fsdp_tp") else ()))


def build_mesh(cfg: ParallelConfig, devices: list | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor, sequence), Auto axis types.

    Devices are ordered by (process, id), so the innermost axes (sequence, tensor,
    fsdp) stay within a host/node and `data` spans nodes — the layout Hybrid ZeRO
    needs. For `hybrid`, fsdp defaults to the devices of one node.
    """
    devices = list(devices if devices is not None else jax.devices())
    devices.sort(key=lambda d: (d.process_index, d.id))
    n = len(devices)
    sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor, "sequence": cfg.sequence}
    if cfg.preset == "hybrid":
        per_node = cfg.devices_per_node or jax.local_device_count()
        inner = cfg.tensor * cfg.sequence
        if per_node % inner:
            raise ValueError(f"devices_per_node={per_node} is not a multiple of tensor x sequence = {inner}")
        sizes["fsdp"] = per_node // inner
        sizes["data"] = -1
    known = math.prod(s for s in sizes.values() if s != -1)
    if n % known:
        raise ValueError(f"{n} devices cannot be split into mesh sizes {sizes}")
    for k, s in sizes.items():
        if s == -1:
            sizes[k] = n // known
    if math.prod(sizes.values()) != n:
        raise ValueError(f"mesh sizes {sizes} use {math.prod(sizes.values())} devices, have {n}")
    shape = tuple(sizes[a] for a in MESH_AXES)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def tree_shardings(
    logical: Mapping[str, tuple[str | None, ...]], shapes: Mapping[str, tuple[int, ...]], rules: ShardingRules, mesh: Mesh
) -> dict[str, NamedSharding]:
    """NamedShardings for a flat dict of arrays given their logical axes."""
    return {k: NamedSharding(mesh, rules.spec(logical[k], tuple(shapes[k]), mesh)) for k in logical}


def batch_sharding(mesh: Mesh, rules: ShardingRules, ndim: int = 2) -> NamedSharding:
    """Sharding for [batch, length, ...] activations/inputs."""
    return NamedSharding(mesh, P(rules.mesh_axes("batch"), *([None] * (ndim - 1))))


def per_device_bytes(tree) -> int:
    """Bytes held on the first device by a pytree of jax arrays."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            total += leaf.addressable_shards[0].data.nbytes
    return total


# ----------------------------------------------------------------------------- activations

_ACTIVATION: list[tuple[Mesh, ShardingRules]] = []


class activation_sharding:
    """Context in which `constrain` pins activations to the rules' mesh axes (tracing time)."""

    def __init__(self, mesh: Mesh, rules: ShardingRules):
        self.entry = (mesh, rules)

    def __enter__(self):
        _ACTIVATION.append(self.entry)
        return self

    def __exit__(self, *exc):
        _ACTIVATION.pop()


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    """`with_sharding_constraint` by logical axis names; a no-op outside `activation_sharding`."""
    if not _ACTIVATION:
        return x
    mesh, rules = _ACTIVATION[-1]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, rules.spec(logical_axes, x.shape, mesh)))
