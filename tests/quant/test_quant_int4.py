"""Int4 RTN group quantization: codes, packing and error against a numpy reference quantizer."""

import numpy as np
import pytest

from puyu_jax.kernels.int4_matmul import unpack_int4
from puyu_jax.quant.int4 import fake_quantize, quantize_int4


def numpy_rtn(w2: np.ndarray, group_size: int):
    """Reference: llm-awq's pseudo_quantize_tensor (zero point), groups along K of w2 [K, N]."""
    k, n = w2.shape
    g = w2.reshape(k // group_size, group_size, n).astype(np.float32)
    wmax, wmin = g.max(axis=1), g.min(axis=1)
    scales = np.maximum(wmax - wmin, 1e-5) / 15
    zeros = np.clip(-np.round(wmin / scales), 0, 15)
    q = np.clip(np.round(g / scales[:, None]) + zeros[:, None], 0, 15)
    deq = (q - zeros[:, None]) * scales[:, None]
    return q.reshape(k, n), scales, zeros, deq.reshape(k, n)


@pytest.mark.parametrize("shape,n_in,group", [((64, 48), 1, 32), ((64, 4, 8), 1, 16), ((4, 16, 40), 2, 32)])
def test_rtn_matches_numpy_reference(shape, n_in, group):
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.05, shape).astype(np.float32)
    k = int(np.prod(shape[:n_in]))
    w2 = w.reshape(k, -1)
    q_ref, s_ref, z_ref, deq_ref = numpy_rtn(w2, group)
    qw = quantize_int4(w, n_in=n_in, group_size=group)
    assert qw.qweight.dtype == np.uint8 and qw.qweight.shape == (k // 2, w2.shape[1])
    np.testing.assert_allclose(np.asarray(qw.scales), s_ref, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(qw.zeros), z_ref)
    codes = np.asarray(unpack_int4(qw.qweight)).astype(np.float32)
    assert np.mean(codes == q_ref) > 0.999  # a rounding tie may land differently
    deq = np.asarray(qw.dequantize())
    assert deq.shape == shape
    np.testing.assert_allclose(deq.reshape(k, -1), deq_ref, atol=float(s_ref.max()) + 1e-7)
    # RTN error bound: half a step per element (every group here spans zero, so nothing clips)
    step = np.repeat(s_ref, group, axis=0)
    assert np.all(np.abs(deq.reshape(k, -1) - w2) <= step / 2 + 1e-6)


def test_packing_low_nibble_is_even_row():
    w = np.arange(16, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)  # one group: codes 0..15
    qw = quantize_int4(w, group_size=16)
    packed = np.asarray(qw.qweight)
    assert packed[0, 0] == 0 | (1 << 4) and packed[7, 0] == 14 | (15 << 4)
    np.testing.assert_allclose(np.asarray(qw.dequantize()), w, atol=1e-5)


def test_k_not_multiple_of_group_is_padded_with_last_row():
    rng = np.random.default_rng(1)
    w = rng.normal(0, 1, (48, 8)).astype(np.float32)  # K=48, groups of 32 -> padded to 64
    qw = quantize_int4(w, group_size=32)
    assert qw.qweight.shape == (32, 8) and qw.scales.shape == (2, 8)
    # the padded group's range is its 16 real rows' range
    _, s_ref, _, deq_ref = numpy_rtn(np.concatenate([w, np.repeat(w[-1:], 16, 0)]), 32)
    np.testing.assert_allclose(np.asarray(qw.scales), s_ref, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(qw.dequantize()), deq_ref[:48], atol=1e-6)
    np.testing.assert_allclose(np.asarray(fake_quantize(w, 32)), deq_ref[:48], atol=1e-6)
