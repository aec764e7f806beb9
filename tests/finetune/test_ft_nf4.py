"""NF4 with double-quantized scales: the table, packing, round-trip error."""

import jax
import jax.numpy as jnp
import numpy as np

from puyu_jax.quant.nf4 import NF4_TABLE, nf4_bytes_per_param, nf4_levels, quantize_nf4

# bitsandbytes' published NF4 values (QLoRA paper, Appendix E / bitsandbytes functional.py).
PUBLISHED = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]


def test_table_matches_bitsandbytes_and_its_construction():
    np.testing.assert_array_equal(NF4_TABLE, np.float32(PUBLISHED))
    np.testing.assert_allclose(nf4_levels(), PUBLISHED, atol=1e-6)


def test_table_points_round_trip_exactly_and_codes_pack_two_per_byte():
    x = jnp.asarray(np.tile(NF4_TABLE, 8) * 0.37)  # 128 values = 2 blocks with absmax 0.37
    q = quantize_nf4(x)
    assert q.codes.dtype == jnp.uint8 and q.codes.shape == (64,) and q.scale_q.dtype == jnp.int8
    assert int(q.codes[0]) == (0 << 4) | 1  # levels 0 and 1 in the high and low nibble
    np.testing.assert_allclose(q.dequantize(), x, atol=1e-6)


def test_round_trip_error_vs_fp_on_gaussian_weights():
    w = 0.02 * jax.random.normal(jax.random.key(0), (576, 1536), jnp.float32)
    q = quantize_nf4(w, block=64, scale_block=256)
    d = q.dequantize()
    assert d.shape == w.shape and d.dtype == w.dtype
    rel = float(jnp.sqrt(jnp.mean((d - w) ** 2)) / jnp.std(w))
    assert 0.05 < rel < 0.11  # 4-bit NormalFloat on N(0, s): ~9% relative RMS error
    # double quantization costs little against exact fp32 block scales
    blocks = w.reshape(-1, 64)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    np.testing.assert_allclose(q.absmax(), absmax, rtol=0.02, atol=float(absmax.max()) / 254)
    assert abs(q.nbytes / w.size - nf4_bytes_per_param()) < 1e-3 and q.nbytes < w.nbytes / 7.5
