"""The one model config: every supported family is a value of `ModelConfig`.

Families differ only in this config and in their weight-name map
(`puyu_jax/models/hf.py`); the forward code is shared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

FAMILIES = ("llama", "qwen2", "mistral", "internlm", "internlm2")
ROPE_SCALINGS = ("none", "linear", "dynamic", "llama3")
DTYPES = ("float32", "bfloat16", "float16")
ATTENTION_IMPLS = ("einsum", "dot_product")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary position embedding.

    `scaling` is one of: none, linear (position interpolation), dynamic
    (dynamic NTK, as in transformers / InternLM2), llama3 (Llama-3.1's
    wavelength-dependent interpolation).
    """

    theta: float = 10000.0
    scaling: str = "none"
    factor: float = 1.0
    # llama3 scaling
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    # context the scaling is relative to (llama3, dynamic); 0 means max_position_embeddings
    original_max_position_embeddings: int = 0

    def __post_init__(self):
        if self.scaling not in ROPE_SCALINGS:
            raise ValueError(f"rope.scaling={self.scaling!r}: expected one of {ROPE_SCALINGS}")


@dataclass(frozen=True)
class ModelConfig:
    """Decoder-only transformer: RMSNorm, RoPE, MHA/GQA/MQA, SwiGLU."""

    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 0  # 0 means hidden_size // num_heads
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    rope: RopeConfig = field(default_factory=RopeConfig)
    qkv_bias: bool = False  # bias on q, k, v projections (qwen2, internlm)
    o_bias: bool = False  # bias on the output projection (internlm)
    tie_word_embeddings: bool = False
    sliding_window: int = 0  # 0 means full attention (mistral v0.1 uses 4096)
    # einsum: plain-JAX GQA attention; dot_product: jax.nn.dot_product_attention, which
    # lowers to cuDNN flash attention on NVIDIA GPUs (XLA elsewhere).
    attention_impl: str = "einsum"
    # Training / scoring without a cache: run the layers as one `lax.scan` (one compiled layer,
    # so deep models compile fast). Parameters and checkpoints keep one entry per layer.
    scan_layers: bool = False
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype of the parameters
    # Token ids and the chat template are properties of the checkpoint's tokenizer;
    # these are defaults used when a model is built from a config alone.
    bos_token_id: int = 1
    eos_token_id: int = 2
    chat_template: str = "plain"

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r}: expected one of {FAMILIES}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected one of {DTYPES}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl={self.attention_impl!r}: expected one of {ATTENTION_IMPLS}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)
