"""Sharding as data: a mesh config, logical-axis rule tables and one `ShardingPlan` per run.

The model names only logical axes (`vocab`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`, `norm`; activations `batch`, `length`). A `ShardingRules` maps
each logical axis to mesh axes (`data`, `fsdp`, `tensor`, `sequence`). A preset is
four rule tables — parameters, gradients, optimizer state, activations — and that is
all that tells the ZeRO stages apart:

| preset  | params                      | grads                        | optimizer state | batch      |
|---------|-----------------------------|------------------------------|-----------------|------------|
| dp      | replicated                  | replicated (all-reduce)      | replicated      | data, fsdp |
| zero1   | replicated                  | replicated (all-reduce)      | over fsdp       | data, fsdp |
| zero2   | replicated                  | over fsdp (reduce-scatter)   | over fsdp       | data, fsdp |
| zero3   | over fsdp                   | over fsdp (reduce-scatter)   | over fsdp       | data, fsdp |
| hybrid  | zero3 with fsdp = the devices of one node, replicated across nodes (`data`) |||          |
| tp      | heads/kv_heads/mlp/vocab over tensor | same                | same            | data, fsdp |
| fsdp_tp | fsdp + tensor               | fsdp + tensor                | fsdp + tensor   | data, fsdp |

`ShardingPlan.build(parallel_config)` makes the mesh and picks the tables once; the
train step, the serving runner (tensor parallelism) and the memory estimator all read
shardings from it. A dimension that its mesh axes do not divide is an error naming the
logical axis, the size and the mesh axes, unless the rule table lists that logical axis
in `replicate_if_indivisible` (serving TP does so for its tensor-parallel axes: 9 heads
over 2 devices replicate attention and still shard the MLP).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
PRESETS = ("dp", "zero1", "zero2", "zero3", "tp", "fsdp_tp", "hybrid")
LOGICAL_AXES = ("vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm", "batch", "length")
COMPONENTS = ("params", "grads", "opt_state", "activations")


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


MeshAxes = str | tuple[str, ...] | None


@dataclass(frozen=True)
class ShardingRules:
    """Logical axis name -> mesh axis (or tuple of axes, or None for replicated).

    `replicate_if_indivisible` lists logical axes allowed to stay replicated when their
    mesh axes do not divide them; any other indivisible dimension is an error.
    """

    rules: tuple[tuple[str, MeshAxes], ...]
    replicate_if_indivisible: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self):
        for logical, mesh_axes in self.rules:
            if logical not in LOGICAL_AXES:
                raise ValueError(f"unknown logical axis {logical!r}; known: {LOGICAL_AXES}")
            for ax in _as_tuple(mesh_axes):
                if ax not in MESH_AXES:
                    raise ValueError(f"{logical!r} -> unknown mesh axis {ax!r}; known: {MESH_AXES}")
        for logical in self.replicate_if_indivisible:
            if logical not in LOGICAL_AXES:
                raise ValueError(f"unknown logical axis {logical!r} in replicate_if_indivisible")

    def mesh_axes(self, logical: str | None) -> MeshAxes:
        return dict(self.rules).get(logical) if logical else None

    def spec(self, logical_axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh | AbstractMesh) -> P:
        """PartitionSpec for an array of `shape` whose dimensions are `logical_axes`.

        A mesh axis is used at most once per array (a later dimension that maps to an
        axis already used stays replicated); mesh axes of size 1 are dropped.

        Raises:
          ValueError: a dimension its mesh axes do not divide, naming the logical axis,
            the size and the mesh axes (unless listed in `replicate_if_indivisible`).
        """
        used: set[str] = set()
        out = []
        for name, dim in zip(logical_axes, shape):
            axes = tuple(a for a in _as_tuple(self.mesh_axes(name)) if a not in used and mesh.shape[a] > 1)
            size = math.prod(mesh.shape[a] for a in axes)
            if axes and dim % size:
                if name in self.replicate_if_indivisible:
                    out.append(None)
                    continue
                raise ValueError(
                    f"logical axis {name!r} of size {dim} is not divisible by mesh axes {axes} "
                    f"(size {size}) in an array of shape {tuple(shape)}: change the mesh, or list "
                    f"{name!r} in the rules' replicate_if_indivisible")
            if not axes:
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


def preset_rules(preset: str) -> dict[str, ShardingRules]:
    """The rule table of each component (params, grads, opt_state, activations) of a preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {PRESETS}")
    replicated = ShardingRules(_BATCH)
    fsdp = ShardingRules(_BATCH + _FSDP)
    tp = ShardingRules(_BATCH + _TP)
    fsdp_tp = ShardingRules(_BATCH + _FSDP + _TP)
    params, grads, opt = {
        "dp": (replicated, replicated, replicated),
        "zero1": (replicated, replicated, fsdp),
        "zero2": (replicated, fsdp, fsdp),
        "zero3": (fsdp, fsdp, fsdp),
        "hybrid": (fsdp, fsdp, fsdp),
        "tp": (tp, tp, tp),
        "fsdp_tp": (fsdp_tp, fsdp_tp, fsdp_tp),
    }[preset]
    activations = tp if preset in ("tp", "fsdp_tp") else replicated
    return {"params": params, "grads": grads, "opt_state": opt, "activations": activations}


def mesh_sizes(cfg: ParallelConfig, n_devices: int, local_devices: int | None = None) -> dict[str, int]:
    """Mesh axis sizes for `n_devices` (resolving -1 and the hybrid node size)."""
    sizes = {"data": cfg.data, "fsdp": cfg.fsdp, "tensor": cfg.tensor, "sequence": cfg.sequence}
    if cfg.preset == "hybrid":
        per_node = cfg.devices_per_node or (local_devices if local_devices is not None else jax.local_device_count())
        inner = cfg.tensor * cfg.sequence
        if per_node % inner:
            raise ValueError(f"devices_per_node={per_node} is not a multiple of tensor x sequence = {inner}")
        sizes["fsdp"] = per_node // inner
        sizes["data"] = -1
    known = math.prod(s for s in sizes.values() if s != -1)
    if n_devices % known:
        raise ValueError(f"{n_devices} devices cannot be split into mesh sizes {sizes}")
    for k, s in sizes.items():
        if s == -1:
            sizes[k] = n_devices // known
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(f"mesh sizes {sizes} use {math.prod(sizes.values())} devices, have {n_devices}")
    return sizes


def build_mesh(cfg: ParallelConfig, devices: list | None = None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor, sequence), Auto axis types.

    Devices are ordered by (process, id), so the innermost axes (sequence, tensor,
    fsdp) stay within a host/node and `data` spans nodes — the layout Hybrid ZeRO
    needs. For `hybrid`, fsdp defaults to the devices of one node.
    """
    devices = list(devices if devices is not None else jax.devices())
    devices.sort(key=lambda d: (d.process_index, d.id))
    sizes = mesh_sizes(cfg, len(devices))
    shape = tuple(sizes[a] for a in MESH_AXES)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


@dataclass(frozen=True)
class ShardingPlan:
    """The mesh and the rule table of every component of a run, decided once.

    Build it with `ShardingPlan.build(parallel_config, devices)` (a real mesh) or
    `ShardingPlan.abstract(parallel_config, n_devices)` (sizes only: estimates).
    """

    mesh: Mesh | AbstractMesh
    preset: str
    rules: Mapping[str, ShardingRules]  # component -> rules (COMPONENTS)

    @classmethod
    def build(cls, cfg: ParallelConfig, devices: list | None = None) -> "ShardingPlan":
        return cls(build_mesh(cfg, devices), cfg.preset, preset_rules(cfg.preset))

    @classmethod
    def abstract(cls, cfg: ParallelConfig, n_devices: int, local_devices: int | None = None) -> "ShardingPlan":
        """A plan over an `AbstractMesh` of `n_devices`: specs and per-device sizes, no devices."""
        sizes = mesh_sizes(cfg, n_devices, local_devices if local_devices is not None else n_devices)
        mesh = AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                            axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))
        return cls(mesh, cfg.preset, preset_rules(cfg.preset))

    @classmethod
    def serving(cls, tp: int, devices: list | None = None) -> "ShardingPlan":
        """Tensor parallelism over `tp` devices for inference: the `tp` tables, except that a
        heads / kv_heads / mlp / vocab dimension `tp` does not divide stays replicated
        (e.g. 9 heads over 2 devices: attention replicated, the MLP still sharded; the paged
        KV pool follows kv_heads). Serving keeps any checkpoint runnable on any `tp`."""
        devices = list(devices if devices is not None else jax.devices())
        if tp > len(devices):
            raise ValueError(f"tp={tp} but only {len(devices)} devices are visible")
        mesh = build_mesh(ParallelConfig(preset="tp", data=1, tensor=tp), devices[:tp])
        soft = frozenset({"heads", "kv_heads", "mlp", "vocab"})
        rules = {k: ShardingRules(r.rules, soft) for k, r in preset_rules("tp").items()}
        return cls(mesh, "tp", rules)

    # -- sizes ---------------------------------------------------------------------------

    def axis_size(self, *axes: str) -> int:
        return math.prod(self.mesh.shape[a] for a in axes)

    @property
    def batch_axes(self) -> tuple[str, ...]:
        return _as_tuple(self.rules["activations"].mesh_axes("batch"))

    @property
    def batch_devices(self) -> int:
        """How many ways the batch is split (data x fsdp)."""
        return self.axis_size(*self.batch_axes)

    # -- specs and shardings -------------------------------------------------------------

    def spec(self, component: str, logical_axes: tuple[str | None, ...], shape: tuple[int, ...]) -> P:
        return self.rules[component].spec(logical_axes, tuple(shape), self.mesh)

    def sharding(self, component: str, logical_axes: tuple[str | None, ...], shape: tuple[int, ...]) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(component, logical_axes, shape))

    def shardings(self, component: str, logical: Mapping[str, tuple[str | None, ...]],
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, NamedSharding]:
        """NamedShardings of a flat dict of arrays (name -> logical axes, name -> shape).

        A bad dimension's error names the array too."""
        out = {}
        for k in logical:
            try:
                out[k] = self.sharding(component, logical[k], tuple(shapes[k]))
            except ValueError as e:
                raise ValueError(f"{k} ({component}, preset {self.preset}): {e}") from None
        return out

    def local_size(self, component: str, logical_axes: tuple[str | None, ...], shape: tuple[int, ...]) -> int:
        """Elements of one array held by each device under `component`'s rules."""
        spec = self.spec(component, logical_axes, shape)
        n = math.prod(shape)
        for axes in spec:
            n //= self.axis_size(*_as_tuple(axes))
        return n

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    def batch_sharding(self, ndim: int = 2, leading: int = 0) -> NamedSharding:
        """Sharding of [*leading, batch, ...] inputs: batch over the batch axes, rest replicated."""
        axes = self.batch_axes
        b = None if not axes else axes[0] if len(axes) == 1 else axes
        return NamedSharding(self.mesh, P(*([None] * leading), b, *([None] * (ndim - leading - 1))))

    def check_batch(self, batch: int, what: str = "batch") -> None:
        if batch % self.batch_devices:
            raise ValueError(f"{what}={batch} is not divisible by the batch axes {self.batch_axes} "
                             f"(size {self.batch_devices}) of preset {self.preset}")

    # -- activations ---------------------------------------------------------------------

    @contextlib.contextmanager
    def activations(self) -> Iterator["ShardingPlan"]:
        """While tracing inside this context, `constrain` pins activations to this plan."""
        _ACTIVE.append(self)
        try:
            yield self
        finally:
            _ACTIVE.pop()


def per_device_bytes(tree) -> int:
    """Bytes held on the first device by a pytree of jax arrays."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if isinstance(leaf, jax.Array):
            total += leaf.addressable_shards[0].data.nbytes
    return total


_ACTIVE: list[ShardingPlan] = []


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
    """`with_sharding_constraint` by logical axis names under the active plan's activation
    rules (`with plan.activations():`); a no-op outside one."""
    if not _ACTIVE:
        return x
    plan = _ACTIVE[-1]
    return jax.lax.with_sharding_constraint(x, plan.sharding("activations", logical_axes, x.shape))
