"""Accelerator chip specs for roofline estimates: one table, each row with its source.

Figures are per chip (one JAX device: v4 and v5p run their two TensorCores as one
"megacore" device), dense bf16 without sparsity, with the units the vendor page uses
(GB = 1e9 bytes, GiB = 2**30 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

GB, GIB = 1e9, 2**30


@dataclass(frozen=True)
class Chip:
    name: str
    device_kinds: tuple[str, ...]  # `device.device_kind` values that mean this chip
    peak_bf16_flops: float  # FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    source: str


CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", ("TPU v4",), 275e12, 32 * GIB, 1200 * GB,
               "https://cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16; HBM2 32 GiB, 1200 GBps)"),
    "v5e": Chip("TPU v5e", ("TPU v5 lite", "TPU v5e"), 197e12, 16 * GB, 819 * GB,
                "https://cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16; HBM2 16 GB, 819 GBps)"),
    "v5p": Chip("TPU v5p", ("TPU v5", "TPU v5p"), 459e12, 95 * GB, 2765 * GB,
                "https://cloud.google.com/tpu/docs/v5p (459 TFLOP/s bf16; HBM2e 95 GB, 2765 GBps)"),
    "v6e": Chip("TPU v6e", ("TPU v6 lite", "TPU v6e"), 918e12, 32 * GB, 1640 * GB,
                "https://cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16; HBM 32 GB, 1640 GBps)"),
    "h100": Chip("H100 SXM", ("NVIDIA H100 80GB HBM3", "H100"), 989e12, 80 * GB, 3350 * GB,
                 "https://www.nvidia.com/en-us/data-center/h100/ (989 TFLOP/s dense bf16; 80 GB HBM3, 3.35 TB/s)"),
}


def chip_for(device_kind: str) -> Chip:
    """The chip whose `device_kinds` names `device_kind` exactly (then by prefix, longest first)."""
    for chip in CHIPS.values():
        if device_kind in chip.device_kinds:
            return chip
    by_prefix = sorted(((k, c) for c in CHIPS.values() for k in c.device_kinds), key=lambda kc: -len(kc[0]))
    for kind, chip in by_prefix:
        if device_kind.lower().startswith(kind.lower()):
            return chip
    raise KeyError(f"no spec for device kind {device_kind!r}; known chips: {', '.join(CHIPS)}")
