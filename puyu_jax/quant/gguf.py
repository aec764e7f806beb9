"""Serving a GGUF's quantized weights as they are (`quant="native"`).

llama.cpp's legacy block types map onto the engine's quantized formats without rounding
anything again: every block is 32 weights along K (a row of the HF Linear `[N, K]`), with

    Q4_0  d fp16, 16 bytes of 4-bit codes      w = d * (q - 8)   -> Int4Weight, kind "sym"
    Q4_1  d fp16, m fp16, 16 bytes of codes     w = d * q + m     -> Int4Weight, kind "min"
    Q8_0  d fp16, 32 int8 codes                 w = d * q         -> Int8Weight

(ggml's `dequantize_row_q4_0` / `_q4_1` / `_q8_0`). A 4-bit block keeps element j in the low
nibble of byte j and element j + 16 in its high nibble; the codes are re-packed into the
kernel's layout (rows 2i / 2i+1 share a byte, `[K/2, N]`) with integer operations only, and
the fp16 scales / minimums are kept as fp16, so the resident weights take the file's bytes.
Every other type (F16, the K-quants Q4_K / Q6_K ..., IQ*) is dequantized to float as usual.

    from puyu_jax.quant.gguf import load_gguf_native
    pre = load_gguf_native("SmolLM2-135M-Instruct.Q4_1.gguf")   # Pretrained(cfg, model, tokenizer)
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from puyu_jax.models.gguf import GGUFBlocks, load_gguf
from puyu_jax.quant.int4 import Int4Weight, Int8Weight, QuantWeight
from puyu_jax.quant.model import EMBED, assemble_model, kernel_shape, n_in_axes

BLOCK = 32
# GGML type -> bytes per block of 32 weights
NATIVE_TYPES: dict[str, int] = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}


def weight_from_blocks(b: GGUFBlocks, shape: tuple[int, ...], n_in: int = 1) -> QuantWeight:
    """The engine's weight for a GGUF matrix of a native type, its bytes reused as they are.

    Args:
      b: the matrix's blocks; `b.shape` = (N, K) in HF order (rows = output features).
      shape: the kernel shape in the model (K axes first), e.g. [d, h, e] or o_proj's [h, e, d].
      n_in: number of leading (contracted) axes of `shape`.
    """
    if b.type_name not in NATIVE_TYPES:
        raise ValueError(f"GGML type {b.type_name} is not served natively (native: {sorted(NATIVE_TYPES)})")
    n, k = b.shape
    if k % BLOCK or int(np.prod(shape[:n_in])) != k or int(np.prod(shape[n_in:])) != n:
        raise ValueError(f"GGUF matrix [N={n}, K={k}] does not fit kernel {shape} (n_in={n_in})")
    g = k // BLOCK
    blocks = np.ascontiguousarray(b.rows).reshape(n, g, NATIVE_TYPES[b.type_name])
    d = np.ascontiguousarray(blocks[..., 0:2]).view(np.float16)[..., 0]  # [N, G]
    if b.type_name == "Q8_0":
        q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8).reshape(n, k)
        return Int8Weight(jnp.asarray(q.T), jnp.asarray(d.T), tuple(shape), n_in, BLOCK)
    start = 4 if b.type_name == "Q4_1" else 2
    qs = blocks[..., start:]  # [N, G, 16]: byte j = element j (low) | element j + 16 (high)
    codes = np.concatenate([qs & 0xF, qs >> 4], axis=-1).reshape(n, k)
    packed = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)  # [N, K/2]
    mins = None
    if b.type_name == "Q4_1":
        mins = jnp.asarray(np.ascontiguousarray(blocks[..., 2:4]).view(np.float16)[..., 0].T)
    return Int4Weight(jnp.asarray(packed.T), jnp.asarray(d.T), None, tuple(shape), n_in, BLOCK, mins)


def native_types(path: str | os.PathLike) -> Counter:
    """GGML types of the GGUF's matrices that `load_gguf_native` keeps as they are (type -> count)."""
    from puyu_jax.models.gguf import read_gguf_meta

    types = read_gguf_meta(path).tensor_types
    return Counter(t for t in types.values() if t in NATIVE_TYPES)


def is_natively_quantized(path: str | os.PathLike) -> bool:
    """Whether a GGUF file holds matrices of a type served natively (Q4_0, Q4_1, Q8_0)."""
    return bool(native_types(path))


def load_gguf_native(path: str | os.PathLike, *, dtype: str | None = None, impl: str = "auto"):
    """Loads a GGUF with its Q4_0 / Q4_1 / Q8_0 matrices kept quantized (see the module docstring).

    Args:
      path: the .gguf file.
      dtype: compute dtype override (float32 / bfloat16).
      impl: `int4_matmul` / `int8_matmul` implementation ("auto": Pallas on GPU / TPU).

    Returns:
      `puyu_jax.pretrained.Pretrained` (cfg, model, tokenizer, source).
    """
    from puyu_jax.models.hf import flat_shapes
    from puyu_jax.pretrained import Pretrained
    from puyu_jax.tokenizer import tokenizer_from_gguf

    path = Path(path)
    cfg, flat, _ = load_gguf(path, keep_types=tuple(NATIVE_TYPES))
    if dtype:
        cfg = cfg.replace(dtype=dtype)
    shapes = flat_shapes(cfg)
    weights, floats = {}, {}
    for key, v in flat.items():
        if isinstance(v, GGUFBlocks):
            n_in = 1 if key == EMBED else n_in_axes(key)
            weights[key] = weight_from_blocks(v, kernel_shape(key, shapes[key]), n_in)
        else:
            floats[key] = v
    model = assemble_model(cfg, floats, weights, impl, source=str(path))
    return Pretrained(cfg, model, tokenizer_from_gguf(path), str(path))


def load_native(source: str | os.PathLike, *, dtype: str | None = None, impl: str = "auto"):
    """`load_gguf_native` for any source naming a GGUF ("smollm2" or a .gguf path); a clear error otherwise."""
    from puyu_jax.pretrained import resolve

    kind, path = resolve(source)
    if kind != "gguf":
        raise ValueError(f"quant='native' serves a GGUF's quantized tensors; {source!r} is a {kind} source "
                         "(use quant='int4' to quantize it)")
    return load_gguf_native(path, dtype=dtype, impl=impl)
