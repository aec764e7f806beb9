"""int4 weight-only matmul: pack/unpack, the twin vs numpy, the Pallas kernel (interpret) vs the twin."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.kernels import int4_matmul, int4_matmul_reference, pack_int4, unpack_int4


def _random_int4(rng, m, k, n, group_size, dtype=np.float32):
    """Random activations and a random quantized weight in the documented layout."""
    q = rng.integers(0, 16, (k, n)).astype(np.uint8)
    scales = rng.uniform(0.005, 0.05, (k // group_size, n)).astype(np.float32)
    zeros = rng.integers(0, 16, (k // group_size, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    return x, q, scales, zeros


def _numpy_dequant_matmul(x, q, scales, zeros, group_size):
    k, n = q.shape
    w = (q.astype(np.float64).reshape(k // group_size, group_size, n) - zeros[:, None]) * scales[:, None]
    return x.astype(np.float64) @ w.reshape(k, n)


def test_pack_unpack_round_trip():
    rng = np.random.default_rng(1)
    q = rng.integers(0, 16, (64, 24)).astype(np.uint8)
    packed = pack_int4(jnp.asarray(q))
    assert packed.shape == (32, 24) and packed.dtype == jnp.uint8
    # Documented nibble order: low = even row, high = odd row.
    np.testing.assert_array_equal(np.asarray(packed), q[0::2] | (q[1::2] << 4))
    np.testing.assert_array_equal(np.asarray(unpack_int4(packed)), q)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_reference_matches_numpy(dtype, tol):
    rng = np.random.default_rng(2)
    x, q, s, z = _random_int4(rng, 7, 256, 96, 64)
    want = _numpy_dequant_matmul(x, q, s, z, 64)
    got = jax.jit(int4_matmul_reference, static_argnames="group_size")(
        jnp.asarray(x, dtype), pack_int4(jnp.asarray(q)), jnp.asarray(s, dtype), jnp.asarray(z, dtype), group_size=64)
    assert got.dtype == dtype and got.shape == (7, 96)
    scale = np.abs(want).max()
    np.testing.assert_allclose(np.asarray(got, np.float32) / scale, want / scale, atol=tol)


@pytest.mark.parametrize(
    "m,k,n,group_size,block_m,block_n,dtype",
    [
        (1, 256, 128, 128, 32, 128, jnp.float32),  # decode, one tile
        (5, 512, 256, 128, 32, 128, jnp.float32),  # m not a multiple of the tile, two n tiles
        (33, 256, 64, 64, 16, 64, jnp.float32),  # three m tiles, smaller groups
        (8, 256, 128, 128, 32, 64, jnp.bfloat16),
    ],
)
def test_kernel_matches_reference(m, k, n, group_size, block_m, block_n, dtype):
    rng = np.random.default_rng(m * 1000 + k + n)
    x, q, s, z = _random_int4(rng, m, k, n, group_size)
    args = (jnp.asarray(x, dtype), pack_int4(jnp.asarray(q)), jnp.asarray(s), jnp.asarray(z))
    want = int4_matmul_reference(*args, group_size=group_size)
    got = int4_matmul(*args, group_size=group_size, impl="pallas", interpret=True, block_m=block_m,
                      block_n=block_n, block_k=2 * group_size)
    assert got.shape == (m, n) and got.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    ref = np.asarray(want, np.float32)
    np.testing.assert_allclose(np.asarray(got, np.float32) / np.abs(ref).max(), ref / np.abs(ref).max(), atol=tol)


def test_auto_is_reference_on_cpu():
    rng = np.random.default_rng(3)
    x, q, s, z = _random_int4(rng, 2, 128, 32, 128)
    args = (jnp.asarray(x), pack_int4(jnp.asarray(q)), jnp.asarray(s), jnp.asarray(z))
    np.testing.assert_array_equal(np.asarray(int4_matmul(*args)), np.asarray(int4_matmul_reference(*args)))
    with pytest.raises(ValueError):
        int4_matmul(*args, impl="cuda")


@pytest.mark.parametrize("platform,call", [("cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu_custom_call")])
def test_kernel_lowers_for_accelerators(platform, call):
    """The compiled (non-interpret) kernel lowers to a Triton / Mosaic custom call."""
    from puyu_jax.kernels.int4_matmul import _int4_pallas

    backend = "tpu" if platform == "tpu" else "gpu"
    fn = jax.jit(lambda x, w, s, z: _int4_pallas(x, w, s, z, group_size=128, backend=backend, interpret=False,
                                                 block_m=32, block_n=128, block_k=256))
    x = jax.ShapeDtypeStruct((3, 512), jnp.bfloat16)  # m = 3: padded to one 16-row tile
    w = jax.ShapeDtypeStruct((256, 1536), jnp.uint8)
    s = jax.ShapeDtypeStruct((4, 1536), jnp.bfloat16)
    text = fn.trace(x, w, s, s).lower(lowering_platforms=(platform,)).as_text()
    assert call in set(re.findall(r"custom_call @([\w$.]+)", text))
