"""Paged decode attention: twin vs dense numpy, kernels (interpret mode) vs twin, int8 / int4 pages, sharding."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from puyu_jax.kernels import paged_attention, paged_attention_reference
from puyu_jax.quant.kv import dequantize_kv, dequantize_kv4, pack_pages4, quantize_kv, quantize_kv4, unpack_pages4


def _case(seed, *, b, kv_heads, group, head_dim, block_size, max_blocks, lengths, n_pages=None,
          dtype=np.float32):
    """Random queries and page pools; each sequence gets distinct shuffled pages, the unused
    table entries point at random (valid) pages as a real allocator would leave them."""
    rng = np.random.default_rng(seed)
    n_pages = n_pages or b * max_blocks + 3
    kp = rng.standard_normal((kv_heads, n_pages, block_size, head_dim)).astype(np.float32)
    vp = rng.standard_normal((kv_heads, n_pages, block_size, head_dim)).astype(np.float32)
    q = rng.standard_normal((b, kv_heads * group, head_dim)).astype(np.float32)
    tables = rng.permutation(n_pages)[: b * max_blocks].reshape(b, max_blocks).astype(np.int32)
    lengths = np.asarray(lengths, np.int32)
    for i, length in enumerate(lengths):
        used = -(-int(length) // block_size)
        tables[i, used:] = rng.integers(0, n_pages, max_blocks - used)
    return (jnp.asarray(q, dtype), jnp.asarray(kp, dtype), jnp.asarray(vp, dtype), jnp.asarray(lengths),
            jnp.asarray(tables))


def _dense_numpy(q, kp, vp, lengths, tables, scale, window=0):
    """Per-sequence, per-head softmax attention over the keys gathered page by page."""
    q, kp, vp = (np.asarray(a, np.float64) for a in (q, kp, vp))
    b, h, e = q.shape
    g = h // kp.shape[0]
    out = np.zeros((b, h, e))
    for i in range(b):
        length = int(lengths[i])
        if length == 0:
            continue
        keys = kp[:, np.asarray(tables[i])].reshape(kp.shape[0], -1, e)[:, :length]
        vals = vp[:, np.asarray(tables[i])].reshape(vp.shape[0], -1, e)[:, :length]
        lo = max(0, length - window) if window else 0
        for head in range(h):
            s = keys[head // g, lo:] @ q[i, head] * scale
            p = np.exp(s - s.max())
            out[i, head] = (p / p.sum()) @ vals[head // g, lo:]
    return out


def _close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("window", [0, 21])
def test_reference_matches_dense_numpy(window):
    q, kp, vp, lengths, tables = _case(0, b=4, kv_heads=3, group=3, head_dim=16, block_size=8, max_blocks=7,
                                       lengths=[50, 1, 0, 33])
    scale = 16 ** -0.5
    got = jax.jit(paged_attention_reference, static_argnames=("scale", "window"))(
        q, kp, vp, lengths, tables, scale=scale, window=window)
    _close(got, _dense_numpy(q, kp, vp, lengths, tables, scale, window), 1e-5)
    np.testing.assert_array_equal(np.asarray(got[2]), 0.0)  # padding row


@pytest.mark.parametrize(
    "group,dtype,window,lowering",
    [
        (1, jnp.float32, 0, "gpu"),
        (4, jnp.bfloat16, 0, "gpu"),
        (8, jnp.float32, 13, "gpu"),
        (4, jnp.float32, 13, "tpu"),
        (3, jnp.bfloat16, 0, "tpu"),
    ],
)
def test_kernel_matches_reference(group, dtype, window, lowering):
    # Ragged lengths inside one batch, one padding row, a length on a page boundary.
    q, kp, vp, lengths, tables = _case(10 + group, b=3, kv_heads=2, group=group, head_dim=32, block_size=16,
                                       max_blocks=5, lengths=[77, 0, 32], dtype=dtype)
    scale = 32 ** -0.5
    want = paged_attention_reference(q, kp, vp, lengths, tables, scale=scale, window=window)
    got = paged_attention(q, kp, vp, lengths, tables, scale=scale, window=window, impl="pallas",
                          interpret=True, pages_per_chunk=2, lowering=lowering)
    assert got.shape == q.shape and got.dtype == dtype
    _close(got, want, 1e-5 if dtype == jnp.float32 else 2e-2)
    np.testing.assert_array_equal(np.asarray(got[1], np.float32), 0.0)


def test_kernel_long_sequence_many_blocks():
    """40 pages of 16 keys, split into three chunks merged after the kernel."""
    q, kp, vp, lengths, tables = _case(20, b=1, kv_heads=1, group=4, head_dim=32, block_size=16, max_blocks=40,
                                       lengths=[631])
    scale = 32 ** -0.5
    got = paged_attention(q, kp, vp, lengths, tables, scale=scale, impl="pallas", interpret=True,
                          pages_per_chunk=16)
    _close(got, _dense_numpy(q, kp, vp, lengths, tables, scale), 1e-5)


@pytest.mark.parametrize("lowering", ["gpu", "tpu"])
def test_int8_pages(lowering):
    q, kp, vp, lengths, tables = _case(30, b=3, kv_heads=2, group=4, head_dim=32, block_size=16, max_blocks=4,
                                       lengths=[60, 5, 0])
    (k8, ks), (v8, vs) = quantize_kv(kp), quantize_kv(vp)
    scale = 32 ** -0.5
    twin = paged_attention_reference(q, k8, v8, lengths, tables, scale=scale, k_scale=ks, v_scale=vs)
    got = paged_attention(q, k8, v8, lengths, tables, scale=scale, k_scale=ks, v_scale=vs, impl="pallas",
                          interpret=True, pages_per_chunk=2, lowering=lowering)
    _close(got, twin, 1e-5)  # same int8 pages: only summation order differs
    # Against attention on the float pages: within int8 quantization error.
    _close(twin, paged_attention_reference(q, kp, vp, lengths, tables, scale=scale), 5e-2)


@pytest.mark.parametrize("lowering", ["gpu", "tpu"])
@pytest.mark.parametrize("window", [0, 37])
def test_int4_pages(lowering, window):
    """int4 pages (packed codes, scale and zero point per token and head): the kernels unpack in
    place and fold the zero points in; they match the twin, and the twin matches dense attention
    over the dequantized pages exactly (to fp32 rounding)."""
    q, kp, vp, lengths, tables = _case(31, b=3, kv_heads=2, group=4, head_dim=32, block_size=16, max_blocks=6,
                                       lengths=[90, 5, 0])
    (kc, ks, kz), (vc, vs, vz) = quantize_kv4(kp + 0.7), quantize_kv4(vp - 0.4)  # skewed rows: zeros matter
    k4, v4 = pack_pages4(kc), pack_pages4(vc)
    assert k4.shape == (2, kp.shape[1], 8, 32) and k4.dtype == jnp.uint8
    scale = 32 ** -0.5
    meta = {"k_scale": ks, "v_scale": vs, "k_zero": kz, "v_zero": vz}
    twin = paged_attention_reference(q, k4, v4, lengths, tables, scale=scale, window=window, **meta)
    got = paged_attention(q, k4, v4, lengths, tables, scale=scale, window=window, impl="pallas", interpret=True,
                          pages_per_chunk=2, pages_per_block=3, lowering=lowering, **meta)
    _close(got, twin, 1e-5)
    kd, vd = dequantize_kv4(kc, ks, kz), dequantize_kv4(vc, vs, vz)
    _close(twin, _dense_numpy(q, kd, vd, lengths, tables, scale, window), 1e-5)
    # Against the float pages: within int4 error (a few times int8's).
    err = np.abs(np.asarray(twin) - np.asarray(paged_attention_reference(q, kp + 0.7, vp - 0.4, lengths, tables,
                                                                          scale=scale, window=window)))
    assert 1e-3 < err.max() < 0.5
    with pytest.raises(ValueError, match="zero"):  # int4 pages without zero points
        paged_attention(q, k4, v4, lengths, tables, scale=scale, k_scale=ks, v_scale=vs)


def test_quantize_kv4_round_trip():
    rng = np.random.default_rng(41)
    x = rng.standard_normal((2, 5, 3, 64)).astype(np.float32) * rng.uniform(0.1, 10, (2, 5, 3, 1)) + 3.0
    x[0, 1, 2] = 1.5  # a constant row must stay exact and finite
    codes, s, z = quantize_kv4(jnp.asarray(x))
    assert codes.shape == x.shape and codes.dtype == jnp.uint8 and int(codes.max()) == 15
    back = np.asarray(dequantize_kv4(codes, s, z, jnp.float32))
    np.testing.assert_allclose(back[0, 1, 2], 1.5, rtol=0, atol=1e-6)
    assert np.all(np.abs(back - x) <= np.asarray(s)[..., None] / 2 + 1e-5)
    # A page of 6 tokens packs into 3 rows: row r = token r (low nibble) | token r + 3 (high).
    c = np.asarray(codes)[:, :4].reshape(2, 2, 6, 64)
    packed = pack_pages4(jnp.asarray(c))
    assert packed.shape == (2, 2, 3, 64)
    np.testing.assert_array_equal(np.asarray(packed), c[:, :, :3] | (c[:, :, 3:] << 4))
    np.testing.assert_array_equal(np.asarray(unpack_pages4(packed)), c)


def test_int4_kv_rotation_spreads_outlier_channels():
    """The rotation int4 KV is stored in is orthonormal (so q.k and p.v are unchanged) and, on
    keys with a few large channels (as real keys have), cuts the per-token 4-bit error."""
    from puyu_jax.quant.kv import kv4_rotation

    for e in (64, 96):  # a power of two, and a block-diagonal one (blocks of 32)
        h = np.asarray(kv4_rotation(e))
        np.testing.assert_allclose(h @ h.T, np.eye(e), atol=1e-6)
    rng = np.random.default_rng(42)
    k = rng.standard_normal((256, 64)).astype(np.float32)
    k[:, [3, 17]] *= 20.0  # outlier channels
    h = np.asarray(kv4_rotation(64))

    def round_trip(x):
        return np.asarray(dequantize_kv4(*quantize_kv4(jnp.asarray(x))))

    plain = np.abs(round_trip(k) - k).mean()
    rotated = np.abs(round_trip(k @ h) @ h.T - k).mean()  # quantized in the rotated basis, rotated back
    assert rotated < plain / 2


def test_quantize_kv_round_trip():
    rng = np.random.default_rng(40)
    x = rng.standard_normal((2, 5, 3, 64)).astype(np.float32) * rng.uniform(0.1, 10, (2, 5, 3, 1))
    x[0, 1, 2] = 0.0  # an all-zero row must stay exact and finite
    q, s = quantize_kv(jnp.asarray(x))
    assert q.dtype == jnp.int8 and s.shape == (2, 5, 3) and s.dtype == jnp.float32
    assert int(jnp.max(jnp.abs(q.astype(jnp.int32)))) == 127
    back = np.asarray(dequantize_kv(q, s, jnp.float32))
    np.testing.assert_array_equal(back[0, 1, 2], 0.0)
    assert np.all(np.abs(back - x) <= np.asarray(s)[..., None] / 2 + 1e-6)
    assert dequantize_kv(q, s, jnp.bfloat16).dtype == jnp.bfloat16


def test_auto_is_reference_on_cpu():
    q, kp, vp, lengths, tables = _case(50, b=2, kv_heads=1, group=2, head_dim=8, block_size=4, max_blocks=3,
                                       lengths=[9, 2])
    want = paged_attention_reference(q, kp, vp, lengths, tables, scale=0.3)
    np.testing.assert_array_equal(np.asarray(paged_attention(q, kp, vp, lengths, tables, scale=0.3)),
                                  np.asarray(want))
    with pytest.raises(ValueError):
        paged_attention(q, kp, vp, lengths, tables, scale=0.3, impl="triton")
    with pytest.raises(ValueError):  # int8 pages without scales
        paged_attention(q, kp.astype(jnp.int8), vp.astype(jnp.int8), lengths, tables, scale=0.3)


def test_shard_map_over_kv_heads():
    """Tensor-parallel serving: pages split on the kv-head axis, q on its head axis, 8 CPU devices."""
    mesh = jax.make_mesh((8,), ("tensor",), axis_types=(jax.sharding.AxisType.Auto,))
    q, kp, vp, lengths, tables = _case(60, b=2, kv_heads=8, group=2, head_dim=16, block_size=16, max_blocks=3,
                                       lengths=[40, 7])
    (k8, ks), (v8, vs) = quantize_kv(kp), quantize_kv(vp)
    scale = 0.25
    want = paged_attention_reference(q, k8, v8, lengths, tables, scale=scale, k_scale=ks, v_scale=vs)
    for impl in ("reference", "pallas"):
        fn = jax.jit(jax.shard_map(
            lambda q, k, v, ksc, vsc, lens, tabs, impl=impl: paged_attention(
                q, k, v, lens, tabs, scale=scale, k_scale=ksc, v_scale=vsc, impl=impl, interpret=True),
            mesh=mesh,
            in_specs=(P(None, "tensor"), P("tensor"), P("tensor"), P("tensor"), P("tensor"), P(), P()),
            out_specs=P(None, "tensor"),
        ))
        _close(fn(q, k8, v8, ks, vs, lengths, tables), want, 1e-5)


@pytest.mark.parametrize("platform,lowering,call", [("cuda", "gpu", "__gpu$xla.gpu.triton"),
                                                    ("tpu", "tpu", "tpu_custom_call")])
@pytest.mark.parametrize("pages", ["bf16", "int8", "int4"])
def test_kernel_lowers_for_accelerators(platform, lowering, call, pages):
    """The compiled (non-interpret) kernels lower to a Triton / Mosaic custom call (SmolLM2 heads)."""
    from puyu_jax.kernels.paged_attention import _paged_pallas

    page_dtype = {"bf16": jnp.bfloat16, "int8": jnp.int8, "int4": jnp.uint8}[pages]
    rows = 8 if pages == "int4" else 16
    scales = jax.ShapeDtypeStruct((3, 64, 16), jnp.float32) if pages != "bf16" else None
    zeros = scales if pages == "int4" else None
    fn = jax.jit(lambda *a: _paged_pallas(*a, scale=0.125, window=32, lowering=lowering, interpret=False,
                                          pages_per_chunk=4))
    text = fn.trace(
        jax.ShapeDtypeStruct((4, 9, 64), jnp.bfloat16),
        jax.ShapeDtypeStruct((3, 64, rows, 64), page_dtype),
        jax.ShapeDtypeStruct((3, 64, rows, 64), page_dtype),
        jax.ShapeDtypeStruct((4,), jnp.int32),
        jax.ShapeDtypeStruct((4, 8), jnp.int32),
        scales, scales, zeros, zeros,
    ).lower(lowering_platforms=(platform,)).as_text()
    assert call in set(re.findall(r"custom_call @([\w$.]+)", text))


@pytest.mark.parametrize("pages_per_block,window,int8", [(1, 0, False), (3, 0, False), (4, 45, False), (3, 0, True),
                                                         (16, 100, True)])
def test_tpu_kernel_several_pages_per_grid_step(pages_per_block, window, int8):
    """The Mosaic kernel's blocks of pages (a block ragged at the end, blocks skipped before a
    window, one block holding every page) against the dense numpy attention."""
    q, kp, vp, lengths, tables = _case(40, b=3, kv_heads=2, group=4, head_dim=32, block_size=16, max_blocks=11,
                                       lengths=[161, 5, 0])
    scale = 32 ** -0.5
    kw = {}
    if int8:
        (kp, ks), (vp, vs) = quantize_kv(kp), quantize_kv(vp)
        kw = {"k_scale": ks, "v_scale": vs}
    got = paged_attention(q, kp, vp, lengths, tables, scale=scale, window=window, impl="pallas", interpret=True,
                          lowering="tpu", pages_per_block=pages_per_block, **kw)
    want = paged_attention_reference(q, kp, vp, lengths, tables, scale=scale, window=window, **kw)
    _close(got, want, 1e-5)
    if not int8:
        _close(got, _dense_numpy(q, kp, vp, lengths, tables, scale, window), 1e-5)
    np.testing.assert_array_equal(np.asarray(got[2]), 0.0)
