"""Pallas kernels, each with a plain-JAX twin (`x` and `x_reference`) of the same contract."""

from puyu_jax.kernels.int4_matmul import (
    int4_matmul,
    int4_matmul_reference,
    int8_matmul,
    int8_matmul_reference,
    pack_int4,
    unpack_int4,
    w8a8_matmul,
    w8a8_matmul_reference,
)
from puyu_jax.kernels.paged_attention import (
    paged_attention,
    paged_attention_reference,
)

__all__ = [
    "int4_matmul",
    "int4_matmul_reference",
    "int8_matmul",
    "int8_matmul_reference",
    "pack_int4",
    "paged_attention",
    "paged_attention_reference",
    "unpack_int4",
    "w8a8_matmul",
    "w8a8_matmul_reference",
]
