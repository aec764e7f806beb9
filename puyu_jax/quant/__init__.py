"""Weight-only int4 quantization for serving: RTN and AWQ, saving / loading, perplexity.

    from puyu_jax.pretrained import load_pretrained
    from puyu_jax.quant import calibration_tokens, quantize_model, save_quantized

    pre = load_pretrained("smollm2")
    calib = calibration_tokens(pre.tokenizer)            # shipped C4 slice, 16 x 512 tokens
    q = quantize_model(pre.model, "awq", group_size=128, calib_tokens=calib)
    save_quantized(q, "out/smollm2-awq", tokenizer=pre.tokenizer, method="awq")

Every q/k/v/o/gate/up/down projection becomes a `QuantProj` holding an `Int4Weight`
(group-wise asymmetric int4 with zero points, packed two per byte in the layout of
`puyu_jax.kernels.int4_matmul`) and runs `int4_matmul`; embeddings, norms and lm_head stay
float. `puyu quantize int4|ppl` is the command line.

Why not qwix. Google's qwix (0.1.8, read from its wheel) covers much of this on paper:
weight-only int4 through `QtRule(weight_qtype=int4, tile_size=128)`, asymmetric "minmax"
calibration with zero points, NNX models with einsum (it intercepts `jnp.einsum` /
`dot_general` in the model's forward), and a contrib AWQ (`qwix.contrib.awq`, 20-point
alpha grid). It does not fit this design, for three reasons. Its quantized weights are
qwix `QArray`s (int4 values with its own scale / zero-point tiling), not the packed
`uint8 [K/2, N]` layout that our Pallas `int4_matmul` and our checkpoints share, so serving
would need a conversion layer or qwix's own matmul path. Its AWQ searches each linear on
its own, with an activation-weighted weight error instead of the output MSE on captured
activations, does not share one scale across q/k/v or gate/up, and keeps the scale beside
the weight (divided at run time) instead of folding 1/s into the preceding norm or
projection; there is no clipping search. And its interception-based providers rewrite the
forward, whereas the projections here are explicit modules whose swap is visible in the
model tree. So the numerics (RTN, AWQ scale and clip search, folding) are written here
(`int4.py`, `awq.py`) directly against the kernel's layout.
"""

from puyu_jax.quant.awq import AWQConfig, apply_awq, calibration_tokens
from puyu_jax.quant.int4 import Int4Weight, Int8Weight, quantize_int4
from puyu_jax.quant.model import (
    QuantEmbed,
    QuantProj,
    dequantized_model,
    is_quantized,
    load_quantized,
    quantize_model,
    save_quantized,
)
from puyu_jax.quant.perplexity import PerplexityResult, perplexity, text_token_ids

__all__ = [
    "AWQConfig",
    "Int8Weight",
    "QuantEmbed",
    "QuantProj",
    "Int4Weight",
    "PerplexityResult",
    "apply_awq",
    "calibration_tokens",
    "dequantized_model",
    "is_quantized",
    "load_quantized",
    "perplexity",
    "quantize_int4",
    "quantize_model",
    "save_quantized",
    "text_token_ids",
]
