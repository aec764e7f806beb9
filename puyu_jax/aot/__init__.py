"""Ahead-of-time compilation for TPU slices on any host: `puyu aot` (see docs/aot.md)."""

from puyu_jax.aot.chips import CHIPS, Chip, chip_for
from puyu_jax.aot.compile import (
    Program,
    Report,
    analyze,
    count_collectives,
    finetune_program,
    loop_cost,
    serve_decode_program,
    tpu_devices,
    train_program,
)

__all__ = [
    "CHIPS",
    "Chip",
    "Program",
    "Report",
    "analyze",
    "chip_for",
    "count_collectives",
    "finetune_program",
    "loop_cost",
    "serve_decode_program",
    "tpu_devices",
    "train_program",
]
