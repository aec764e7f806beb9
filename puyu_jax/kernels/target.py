"""Which backend the kernels lower for (the running one, or an ahead-of-time compile target),
and the small helpers every kernel shares.

Kernels choose their lowering (Pallas Mosaic on TPU, Triton on GPU, the plain-JAX twin on
CPU) at trace time. Normally that is `jax.default_backend()`. When a TPU program is compiled
ahead of time on a CPU-only host (`puyu aot`, see docs/aot.md), tracing happens with the CPU
as default backend, so the compile wraps tracing in `compile_target("tpu")` to get the real
TPU kernels (not interpret mode, not the twin).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax

_TARGETS: list[str] = []


@contextlib.contextmanager
def compile_target(platform: str) -> Iterator[None]:
    """Trace kernels for `platform` ("tpu", "gpu" or "cpu") inside this context."""
    if platform not in ("tpu", "gpu", "cpu"):
        raise ValueError(f"compile target must be 'tpu', 'gpu' or 'cpu', got {platform!r}")
    _TARGETS.append(platform)
    try:
        yield
    finally:
        _TARGETS.pop()


def pow2_at_least(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): the kernels' tile and bucket sizes."""
    return 1 << max(n - 1, 0).bit_length()


def out_struct(shape, dtype, *inputs):
    """Output type for `pallas_call` that also works inside `jax.shard_map(check_vma=True)`: the
    result varies over every mesh axis any (non-None) input varies over."""
    varying = frozenset().union(*(jax.typeof(a).manual_axis_type.varying for a in inputs if a is not None))
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.sharding.ManualAxisType(varying=varying))


def kernel_backend() -> str:
    """The backend kernels lower for: the innermost `compile_target`, else the default backend."""
    if _TARGETS:
        return _TARGETS[-1]
    backend = jax.default_backend()
    return "gpu" if backend in ("cuda", "rocm") else backend
