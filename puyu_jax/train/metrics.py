"""Throughput and MFU: device peaks, a matmul probe for CPUs, a jsonl + tensorboard writer."""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device (vendor figures, no sparsity).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "A800": 312e12,
    "H800": 989e12,
    "L40S": 362e12,
    "4090": 165e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
}


@functools.cache
def measured_matmul_flops(n: int = 1024, dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of a jit'd n x n matmul on the default device (the CPU peak we divide by)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak_flops(device=None) -> tuple[float, str]:
    """(peak FLOP/s, where the figure comes from) for one device."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, peak in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return peak, f"{kind} spec"
    if device.platform == "cpu":
        # All host "devices" share the same cores: the probe measures the whole CPU.
        return measured_matmul_flops() / max(jax.local_device_count(), 1), "cpu matmul probe"
    return float("nan"), f"unknown peak for {kind!r}"


class MetricsWriter:
    """Appends one JSON line per logged step and mirrors scalars to tensorboard."""

    def __init__(self, out_dir: Path, tensorboard: bool = True):
        self._jsonl = self._tb = None
        if jax.process_index() != 0:  # one writer per run
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(out_dir / "metrics.jsonl", "a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if self._jsonl is None:
            return
        self._jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
