"""int4 weight-only matmul: pack/unpack, the twin vs numpy, the Pallas kernel (interpret) vs the twin."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.kernels import (
    int4_matmul,
    int4_matmul_reference,
    int8_matmul,
    int8_matmul_reference,
    pack_int4,
    unpack_int4,
)


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


def _random_kind(rng, k, n, group_size, kind):
    """A packed int4 weight of `kind` (zero / min / sym) and its float64 dequantization [K, N]."""
    q = rng.integers(0, 16, (k, n)).astype(np.uint8)
    g = k // group_size
    s = rng.uniform(0.005, 0.05, (g, n)).astype(np.float16)  # GGUF keeps fp16 scales
    off = {"zero": rng.integers(0, 16, (g, n)).astype(np.float32),
           "min": (-8 * s.astype(np.float32) * rng.uniform(0.5, 1.5, (g, n))).astype(np.float16), "sym": None}[kind]
    qf, sf = q.astype(np.float64).reshape(g, group_size, n), s.astype(np.float64)[:, None]
    if kind == "zero":
        w = (qf - off[:, None]) * sf
    elif kind == "min":
        w = qf * sf + off.astype(np.float64)[:, None]
    else:
        w = (qf - 8) * sf
    return pack_int4(jnp.asarray(q)), jnp.asarray(s), None if off is None else jnp.asarray(off), w.reshape(k, n)


@pytest.mark.parametrize(
    "kind,m,k,n,block_n",
    [
        ("min", 3, 4096, 11008, 2752),  # Q4_1, 7B gate/up: K = 4096 in 128 groups of 32
        ("sym", 1, 11008, 4096, 1024),  # Q4_0, 7B down_proj: K = 11008 in 344 groups
        ("zero", 2, 4096, 4096, 1024),  # AWQ / RTN kind with groups of 32
    ],
)
def test_kernel_kinds_at_7b_shapes(kind, m, k, n, block_n):
    """Groups of 32 with float minimums, symmetric codes and zero points: the Pallas kernel (interpret)
    equals the twin, and the twin equals numpy's dequantize-then-matmul."""
    rng = np.random.default_rng(k + n)
    qw, s, off, w = _random_kind(rng, k, n, 32, kind)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    kw = {"zeros": off} if kind == "zero" else {"mins": off} if kind == "min" else {}
    ref = np.asarray(int4_matmul_reference(x, qw, s, group_size=32, **kw))
    want = np.asarray(x, np.float64) @ w
    np.testing.assert_allclose(ref / np.abs(want).max(), want / np.abs(want).max(), atol=1e-5)
    got = np.asarray(int4_matmul(x, qw, s, group_size=32, impl="pallas", interpret=True, block_n=block_n,
                                 block_k=512, **kw))
    np.testing.assert_allclose(got / np.abs(ref).max(), ref / np.abs(ref).max(), atol=1e-5)


@pytest.mark.parametrize("group_size", [32, 4096])  # Q8_0 blocks; per output channel (W8A16)
def test_int8_kernel_at_7b_shape(group_size):
    rng = np.random.default_rng(group_size)
    k, n, m = 4096, 4096, 2
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    s = rng.uniform(1e-4, 1e-3, (k // group_size, n)).astype(np.float16)
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    want = np.asarray(x, np.float64) @ (q.astype(np.float64).reshape(k // group_size, group_size, n)
                                         * s.astype(np.float64)[:, None]).reshape(k, n)
    ref = np.asarray(int8_matmul_reference(x, jnp.asarray(q), jnp.asarray(s), group_size=group_size))
    np.testing.assert_allclose(ref / np.abs(want).max(), want / np.abs(want).max(), atol=1e-5)
    got = np.asarray(int8_matmul(x, jnp.asarray(q), jnp.asarray(s), group_size=group_size, impl="pallas",
                                 interpret=True, block_n=1024, block_k=1024))
    np.testing.assert_allclose(got / np.abs(ref).max(), ref / np.abs(ref).max(), atol=1e-5)
    with pytest.raises(ValueError, match="int8"):
        int8_matmul(x, jnp.asarray(q).view(jnp.uint8), jnp.asarray(s), group_size=group_size)


def test_zeros_and_mins_together_is_an_error():
    rng = np.random.default_rng(5)
    qw, s, off, _ = _random_kind(rng, 64, 16, 32, "min")
    with pytest.raises(ValueError, match="not both"):
        int4_matmul(jnp.zeros((1, 64)), qw, s, off, mins=off)


@pytest.mark.parametrize("platform,call", [("cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu_custom_call")])
@pytest.mark.parametrize("kind", ["min", "sym", "int8"])
def test_gguf_kinds_lower_for_accelerators(platform, call, kind):
    """Groups of 32 (Q4_1 / Q4_0 / Q8_0) lower to a Triton / Mosaic custom call too."""
    from puyu_jax.kernels.int4_matmul import _int4_pallas, _int8_pallas

    backend = "tpu" if platform == "tpu" else "gpu"
    opts = dict(group_size=32, backend=backend, interpret=False, block_m=32, block_n=128, block_k=256)
    x = jax.ShapeDtypeStruct((3, 512), jnp.bfloat16)
    s = jax.ShapeDtypeStruct((16, 1536), jnp.float16)
    if kind == "int8":
        fn = jax.jit(lambda x, w, s: _int8_pallas(x, w, s, **opts))
        lowered = fn.trace(x, jax.ShapeDtypeStruct((512, 1536), jnp.int8), s)
    else:
        fn = jax.jit(lambda x, w, s, o: _int4_pallas(x, w, s, o, kind=kind, **opts))
        lowered = fn.trace(x, jax.ShapeDtypeStruct((256, 1536), jnp.uint8), s, s if kind == "min" else None)
    text = lowered.lower(lowering_platforms=(platform,)).as_text()
    assert call in set(re.findall(r"custom_call @([\w$.]+)", text))
