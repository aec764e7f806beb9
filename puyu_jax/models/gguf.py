"""GGUF (llama.cpp) checkpoints -> (ModelConfig, flat parameter dict, metadata).

Tensors are dequantized with `gguf.quants.dequantize`, so every quantization
type the installed `gguf` package can dequantize is supported (F32, F16, BF16,
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, the K-quants, IQ*, ...).

llama.cpp's converter permutes the rows of Q and K for llama-style
architectures (HF rotate_half order -> interleaved pairs); `unpermute_qk`
undoes that, so the flat dict is in HF order like everything else.

`load_gguf(..., keep_types=("Q4_1", ...))` leaves the weight matrices of those types as
they are in the file (`GGUFBlocks`: the raw block bytes per row, rows already in HF order);
`puyu_jax.quant.gguf` turns them into the engine's quantized weights without a float copy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from puyu_jax.assets import find_smollm2_gguf  # noqa: F401 (re-exported: its old home)
from puyu_jax.models.config import DTYPES, ModelConfig, RopeConfig
from puyu_jax.models.hf import (
    _cast,
    _check_names,
    _progress,
    _to_flat_layout,
    chat_template_name,
    flat_shapes,
    np_dtype,
)


# GGUF architecture -> (family, Q/K rows permuted by llama.cpp's converter)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "llama": ("llama", True),
    "mistral": ("mistral", True),
    "qwen2": ("qwen2", False),
}

# Flat key -> GGUF tensor name ("{i}" = layer index).
GGUF_NAMES: dict[str, str] = {
    "embed/embedding": "token_embd.weight",
    "final_norm/scale": "output_norm.weight",
    "lm_head/kernel": "output.weight",
    "layers/{i}/attn_norm/scale": "blk.{i}.attn_norm.weight",
    "layers/{i}/mlp_norm/scale": "blk.{i}.ffn_norm.weight",
    "layers/{i}/attn/q_proj/kernel": "blk.{i}.attn_q.weight",
    "layers/{i}/attn/k_proj/kernel": "blk.{i}.attn_k.weight",
    "layers/{i}/attn/v_proj/kernel": "blk.{i}.attn_v.weight",
    "layers/{i}/attn/o_proj/kernel": "blk.{i}.attn_output.weight",
    "layers/{i}/attn/q_proj/bias": "blk.{i}.attn_q.bias",
    "layers/{i}/attn/k_proj/bias": "blk.{i}.attn_k.bias",
    "layers/{i}/attn/v_proj/bias": "blk.{i}.attn_v.bias",
    "layers/{i}/attn/o_proj/bias": "blk.{i}.attn_output.bias",
    "layers/{i}/mlp/gate_proj/kernel": "blk.{i}.ffn_gate.weight",
    "layers/{i}/mlp/up_proj/kernel": "blk.{i}.ffn_up.weight",
    "layers/{i}/mlp/down_proj/kernel": "blk.{i}.ffn_down.weight",
}
ROPE_FREQS = "rope_freqs.weight"  # llama3 rope scaling, stored as per-frequency factors


@dataclass
class GGUFBlocks:
    """A quantized GGUF matrix as stored: `rows` uint8 [N, bytes per row] of `type_name` blocks
    along K, for the numpy-order (HF Linear) shape `shape` = (N, K)."""

    type_name: str
    rows: np.ndarray
    shape: tuple[int, int]


@dataclass
class GGUFMeta:
    """A GGUF file's metadata: every key-value decoded (str / int / float / bool / list)."""

    path: Path
    architecture: str
    metadata: dict[str, Any] = field(repr=False)
    tensor_types: dict[str, str] = field(default_factory=dict, repr=False)  # tensor name -> GGML type name

    def get(self, key: str, default: Any = None) -> Any:
        """metadata[key]; "{arch}" in key is replaced by the architecture."""
        return self.metadata.get(key.format(arch=self.architecture), default)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved pairs -> HF rotate_half halves).

    `w` is [n_head * Dh, ...] (weight or bias); n_head is H for Q and K (kv heads) for K.
    """
    dh = w.shape[0] // n_head
    return w.reshape(n_head, dh // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (inverse of `unpermute_qk`)."""
    dh = w.shape[0] // n_head
    return w.reshape(n_head, 2, dh // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field_value(f: Any) -> Any:
    try:
        return f.contents()
    except UnicodeDecodeError:  # a non-UTF-8 string: decode leniently, per item
        from gguf import GGUFValueType

        if f.types[0] == GGUFValueType.ARRAY:
            return [bytes(f.parts[i]).decode("utf-8", "replace") for i in f.data]
        return bytes(f.parts[f.data[0]]).decode("utf-8", "replace")


def _f32(x: float) -> float:
    """The shortest decimal that round-trips a float32 metadata value (9.99999975e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def llama3_rope_factors(theta: float, dim: int, rope: RopeConfig) -> np.ndarray:
    """Per-frequency divisors of llama3 rope scaling, as llama.cpp stores them in `rope_freqs`."""
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    old = rope.original_max_position_embeddings
    low_wl, high_wl = old / rope.low_freq_factor, old / rope.high_freq_factor
    out = []
    for fr in freqs:
        wl = 2 * math.pi / fr
        if wl < high_wl:
            out.append(1.0)
        elif wl > low_wl:
            out.append(rope.factor)
        else:
            s = (old / wl - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
            out.append(1.0 / ((1 - s) / rope.factor + s))
    return np.asarray(out, np.float32)


def _rope_from_gguf(meta: GGUFMeta, head_dim: int, rope_freqs: np.ndarray | None) -> RopeConfig:
    theta = _f32(meta.get("{arch}.rope.freq_base", 10000.0))
    kind = meta.get("{arch}.rope.scaling.type", "none")
    factor = float(meta.get("{arch}.rope.scaling.factor", 0.0) or meta.get("{arch}.rope.scale_linear", 0.0) or 1.0)
    omax = int(meta.get("{arch}.rope.scaling.original_context_length", 0) or 0)
    if rope_freqs is not None:
        # llama3: llama.cpp keeps only the factors; recover the parameters, assuming
        # Llama-3.1's low/high frequency factors and original context, and verify them.
        rope = RopeConfig(theta, "llama3", float(rope_freqs.max()), 1.0, 4.0, omax or 8192)
        if not np.allclose(llama3_rope_factors(theta, head_dim, rope), rope_freqs, rtol=1e-4):
            raise ValueError("rope_freqs does not match llama3 scaling with low/high freq factors 1/4")
        return rope
    if kind == "none" and factor == 1.0:
        return RopeConfig(theta=theta)
    if kind in ("linear", "none"):
        return RopeConfig(theta=theta, scaling="linear", factor=factor, original_max_position_embeddings=omax)
    raise ValueError(f"GGUF rope scaling type {kind!r} is not supported (expected none or linear)")


def _config_from_gguf(
    meta: GGUFMeta, tensors: dict[str, Any], rope_freqs: np.ndarray | None, dtype: np.dtype
) -> ModelConfig:
    arch = meta.architecture
    if arch not in ARCHITECTURES:
        raise ValueError(f"GGUF architecture {arch!r} is not supported (expected one of {sorted(ARCHITECTURES)})")

    def need(key: str) -> Any:
        v = meta.get(key)
        if v is None:
            raise KeyError(f"{meta.path}: metadata {key.format(arch=arch)!r} missing")
        return v

    d, h = int(need("{arch}.embedding_length")), int(need("{arch}.attention.head_count"))
    k = meta.get("{arch}.attention.head_count_kv", h)
    if isinstance(k, list):
        if len(set(k)) != 1:
            raise ValueError(f"per-layer head_count_kv {k} is not supported")
        k = k[0]
    head_dim = int(meta.get("{arch}.attention.key_length", 0) or d // h)
    rot_dim = int(meta.get("{arch}.rope.dimension_count", 0) or head_dim)
    if rot_dim != head_dim:
        raise ValueError(f"partial rotary embeddings (rope.dimension_count={rot_dim}, head_dim={head_dim})")
    emb_shape = tensors["token_embd.weight"].shape  # GGML order: [D, V]
    name = dtype.name
    tmpl = meta.get("tokenizer.chat_template")
    return ModelConfig(
        family=ARCHITECTURES[arch][0],
        vocab_size=int(emb_shape[-1]),
        hidden_size=d,
        intermediate_size=int(need("{arch}.feed_forward_length")),
        num_layers=int(need("{arch}.block_count")),
        num_heads=h,
        num_kv_heads=int(k),
        head_dim=0 if head_dim == d // h else head_dim,
        rms_norm_eps=_f32(meta.get("{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        max_position_embeddings=int(meta.get("{arch}.context_length", 2048)),
        rope=_rope_from_gguf(meta, head_dim, rope_freqs),
        qkv_bias="blk.0.attn_q.bias" in tensors,
        o_bias="blk.0.attn_output.bias" in tensors,
        tie_word_embeddings="output.weight" not in tensors,
        sliding_window=int(meta.get("{arch}.attention.sliding_window", 0) or 0),
        dtype=name if name in DTYPES else "float32",
        param_dtype=name if name in DTYPES else "float32",
        bos_token_id=int(meta.get("tokenizer.ggml.bos_token_id", 1)),
        eos_token_id=int(meta.get("tokenizer.ggml.eos_token_id", 2)),
        chat_template=chat_template_name(tmpl if isinstance(tmpl, str) else None),
    )


def dequantize_tensor(t: Any) -> np.ndarray:
    """A `gguf.ReaderTensor` as float32 in numpy (row-major) shape."""
    from gguf.quants import dequantize

    shape = tuple(int(x) for x in reversed(t.shape.tolist()))
    return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)


def read_gguf_meta(path: str | os.PathLike) -> GGUFMeta:
    """Metadata of a GGUF file (no tensor data is read)."""
    import gguf

    reader = gguf.GGUFReader(path)
    return _meta(Path(path), reader)


def _meta(path: Path, reader: Any) -> GGUFMeta:
    md = {k: _field_value(f) for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    arch = md.get("general.architecture", "llama")
    return GGUFMeta(path, arch, md, {t.name: t.tensor_type.name for t in reader.tensors})


def load_gguf(
    path: str | os.PathLike, dtype: Any = np.float32, keep_types: tuple[str, ...] = ()
) -> tuple[ModelConfig, dict[str, Any], GGUFMeta]:
    """Read a GGUF file into (cfg, flat dict in HF order, metadata); tensors dequantized to `dtype`.

    Kernels and the embedding whose GGML type is in `keep_types` come back as `GGUFBlocks`
    instead (see the module docstring)."""
    import gguf

    path = Path(path)
    reader = gguf.GGUFReader(path)
    meta = _meta(path, reader)
    tensors = {t.name: t for t in reader.tensors}
    rope_freqs = dequantize_tensor(tensors[ROPE_FREQS]) if ROPE_FREQS in tensors else None
    cfg = _config_from_gguf(meta, tensors, rope_freqs, np_dtype(dtype))
    shapes = flat_shapes(cfg)
    names = {}
    for key in shapes:
        i = key.split("/")[1] if key.startswith("layers/") else None
        template = key if i is None else key.replace(f"layers/{i}/", "layers/{i}/", 1)
        names[key] = GGUF_NAMES[template].format(i=i)
    _check_names(set(tensors) - {ROPE_FREQS}, set(names.values()), f"{path.name} tensors")
    permuted = ARCHITECTURES[meta.architecture][1]
    flat: dict[str, np.ndarray] = {}
    for key, name in _progress(list(names.items()), "gguf -> flat"):
        t = tensors[name]
        if t.tensor_type.name in keep_types and (key.endswith("/kernel") or key == "embed/embedding"):
            n_k = tuple(int(x) for x in reversed(t.shape.tolist()))
            rows = np.asarray(t.data).reshape(-1, t.data.shape[-1])
            if permuted and "/q_proj/" in key:
                rows = unpermute_qk(rows, cfg.num_heads)
            elif permuted and "/k_proj/" in key:
                rows = unpermute_qk(rows, cfg.num_kv_heads)
            flat[key] = GGUFBlocks(t.tensor_type.name, rows, (math.prod(n_k[:-1]), n_k[-1]))
            continue
        w = dequantize_tensor(t)
        if permuted and "/q_proj/" in key:
            w = unpermute_qk(w, cfg.num_heads)
        elif permuted and "/k_proj/" in key:
            w = unpermute_qk(w, cfg.num_kv_heads)
        flat[key] = _cast(_to_flat_layout(key, w, shapes[key]), dtype)
    return cfg, flat, meta


def gguf_model_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a GGUF file, without dequantizing its weights."""
    import gguf

    path = Path(path)
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}
    rope_freqs = dequantize_tensor(tensors[ROPE_FREQS]) if ROPE_FREQS in tensors else None
    return _config_from_gguf(_meta(path, reader), tensors, rope_freqs, np.dtype(np.float32))
