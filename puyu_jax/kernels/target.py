"""Which backend the kernels lower for: the running one, or an ahead-of-time compile target.

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


def kernel_backend() -> str:
    """The backend kernels lower for: the innermost `compile_target`, else the default backend."""
    if _TARGETS:
        return _TARGETS[-1]
    backend = jax.default_backend()
    return "gpu" if backend in ("cuda", "rocm") else backend
