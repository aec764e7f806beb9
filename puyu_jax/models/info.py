"""Human-readable summaries of a model config: architecture and parameter counts."""

from __future__ import annotations

import numpy as np

from puyu_jax.models.config import ModelConfig
from puyu_jax.models.params import param_shapes


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Exact parameter counts from the model's own declarations (no memory used).

    Returns total, embedding (input embedding + untied output head) and non-embedding counts.
    """
    shapes = param_shapes(cfg)
    total = sum(int(np.prod(s.shape)) for s in shapes.values())
    emb = sum(int(np.prod(s.shape)) for k, s in shapes.items() if k in ("embed/embedding", "lm_head/kernel"))
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def model_summary(cfg: ModelConfig) -> dict[str, str]:
    """Rows for `puyu model info`."""
    c = count_params(cfg)
    attn = "MHA" if cfg.num_kv_heads == cfg.num_heads else ("MQA" if cfg.num_kv_heads == 1 else "GQA")
    rope = f"theta={cfg.rope.theta:g}"
    if cfg.rope.scaling != "none":
        rope += f", {cfg.rope.scaling} x{cfg.rope.factor:g}"
    bias = ", ".join(n for n, on in (("qkv", cfg.qkv_bias), ("o", cfg.o_bias)) if on) or "none"
    # Training FLOPs per token: 6 * non-embedding params + attention scores (12 * L * d * T at T = context).
    flops = 6 * c["non_embedding"] + 6 * cfg.hidden_size * cfg.vocab_size
    return {
        "family": cfg.family,
        "layers": str(cfg.num_layers),
        "hidden size": str(cfg.hidden_size),
        "attention": f"{attn}: {cfg.num_heads} query / {cfg.num_kv_heads} kv heads x {cfg.dim_per_head}",
        "mlp (SwiGLU)": str(cfg.intermediate_size),
        "vocabulary": str(cfg.vocab_size),
        "context": str(cfg.max_position_embeddings) + (f" (sliding window {cfg.sliding_window})" if cfg.sliding_window else ""),
        "rope": rope,
        "biases": bias,
        "embeddings": "tied" if cfg.tie_word_embeddings else "untied",
        "parameters": f"{c['total']:,} ({_human(c['total'])})",
        "  embedding": f"{c['embedding']:,} ({_human(c['embedding'])})",
        "  non-embedding": f"{c['non_embedding']:,} ({_human(c['non_embedding'])})",
        "weights in bf16 / fp32": f"{c['total'] * 2 / 2**30:.2f} / {c['total'] * 4 / 2**30:.2f} GiB",
        "train FLOPs / token (6N)": _human(flops),
        "KV cache / token (bf16)": f"{2 * cfg.num_layers * cfg.num_kv_heads * cfg.dim_per_head * 2 / 1024:.1f} KiB",
    }
