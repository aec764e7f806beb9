"""The Pallas kernels compiled by the real TPU compiler (libtpu, Mosaic) at 7B shapes, on this CPU.

No TPU is needed: the devices are descriptions from `get_topology_desc`, inputs are abstract.
"""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import SingleDeviceSharding

from puyu_jax.aot.compile import tpu_devices
from puyu_jax.kernels import int4_matmul, paged_attention
from puyu_jax.kernels.target import compile_target

pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is part of `make install`")

# internlm2-7b / llama2-7b decode: 32 query heads of 128, GQA 8 kv heads, 16-token pages.
B, H, KH, E, S = 8, 32, 8, 128, 16
PAGES = 8192  # pool pages: 256 MiB of bf16 keys, too big to be staged in VMEM
TABLE = 256  # pages per sequence: 4096 tokens


@pytest.fixture(scope="module")
def device():
    return tpu_devices("v5e:2x2")[0]


def _sds(shape, dtype, device):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=SingleDeviceSharding(device))


def _nbytes(*structs) -> int:
    return sum(s.size * jnp.dtype(s.dtype).itemsize for s in structs if s is not None)


def _compile_paged(device, page_dtype, window, pages_per_block=16):
    q = _sds((B, H, E), jnp.bfloat16, device)
    int4 = page_dtype == jnp.uint8
    pages = _sds((KH, PAGES, S // 2 if int4 else S, E), page_dtype, device)
    lengths, tables = _sds((B,), jnp.int32, device), _sds((B, TABLE), jnp.int32, device)
    scales = _sds((KH, PAGES, S), jnp.float32, device) if page_dtype != jnp.bfloat16 else None
    zeros = scales if int4 else None

    def f(q, k, v, lengths, tables, ks, vs, kz, vz):
        with compile_target("tpu"):
            return paged_attention(q, k, v, lengths, tables, scale=E ** -0.5, k_scale=ks, v_scale=vs,
                                   k_zero=kz, v_zero=vz, window=window, pages_per_block=pages_per_block)

    args = (q, pages, pages, lengths, tables, scales, scales, zeros, zeros)
    return jax.jit(f).lower(*args).compile(), _nbytes(*args)


@pytest.mark.slow
@pytest.mark.parametrize("page_dtype,window", [(jnp.bfloat16, 0), (jnp.int8, 0), (jnp.uint8, 0), (jnp.bfloat16, 1024)],
                         ids=["bf16", "int8", "int4", "bf16-window"])
def test_paged_attention_compiles_for_tpu(device, page_dtype, window):
    compiled, arg_bytes = _compile_paged(device, page_dtype, window)
    text = compiled.as_text()
    assert 'custom_call_target="tpu_custom_call"' in text  # the Mosaic kernel, not the twin
    mem = compiled.memory_analysis()
    assert arg_bytes <= mem.argument_size_in_bytes <= arg_bytes + (64 << 10)  # small arrays pad to tiles
    assert mem.output_size_in_bytes == B * H * E * 2
    # Nothing pool-sized besides the arguments: the kernel reads pages in place (no gather of
    # the pool, no relayout copy of it); int8 adds only the [b, k, table] scales it reads (int4:
    # scales and zero points).
    table_scales = 2 * B * KH * TABLE * S * 4 * (2 if page_dtype == jnp.uint8 else 1)
    assert mem.temp_size_in_bytes <= (8 * table_scales if page_dtype != jnp.bfloat16 else 1 << 20)
    cost = compiled.cost_analysis()
    keys = B * KH * TABLE * S
    assert cost["flops"] >= 4 * keys * (H // KH) * E  # the kernel's cost estimate reaches XLA


@pytest.mark.slow
@pytest.mark.parametrize("m,k,n", [(8, 4096, 14336), (32, 14336, 4096)], ids=["up", "down"])
def test_int4_matmul_compiles_for_tpu(device, m, k, n):
    group = 128
    args = (_sds((m, k), jnp.bfloat16, device), _sds((k // 2, n), jnp.uint8, device),
            _sds((k // group, n), jnp.float32, device), _sds((k // group, n), jnp.float32, device))

    def f(x, qw, s, z):
        with compile_target("tpu"):
            return int4_matmul(x, qw, s, z, group_size=group)

    compiled = jax.jit(f).lower(*args).compile()
    assert 'custom_call_target="tpu_custom_call"' in compiled.as_text()
    mem = compiled.memory_analysis()
    assert _nbytes(*args) <= mem.argument_size_in_bytes <= _nbytes(*args) + (64 << 10)
    assert mem.output_size_in_bytes == m * n * 2
    # The packed weight is read in place: no dequantized [K, N] copy ever exists.
    assert mem.temp_size_in_bytes < k * n // 4
    assert compiled.cost_analysis()["flops"] >= 2 * m * k * n


def _grid(pages_per_block, page_dtype=jnp.bfloat16):
    """The TPU kernel's grid, read from its pallas_call (tracing only)."""
    q = jax.ShapeDtypeStruct((B, H, E), jnp.bfloat16)
    pages = jax.ShapeDtypeStruct((KH, PAGES, S, E), page_dtype)
    scales = jax.ShapeDtypeStruct((KH, PAGES, S), jnp.float32) if page_dtype == jnp.int8 else None

    def f(q, k, v, lengths, tables, ks, vs):
        with compile_target("tpu"):
            return paged_attention(q, k, v, lengths, tables, scale=1.0, k_scale=ks, v_scale=vs,
                                   pages_per_block=pages_per_block)

    closed = jax.make_jaxpr(f)(q, pages, pages, jax.ShapeDtypeStruct((B,), jnp.int32),
                               jax.ShapeDtypeStruct((B, TABLE), jnp.int32), scales, scales)

    def find(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "pallas_call":
                return tuple(eqn.params["grid_mapping"].grid)
            for sub in eqn.params.values():
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and (got := find(inner)):
                    return got
        return None

    return find(closed.jaxpr)


def test_tpu_kernel_fetches_several_pages_per_grid_step():
    assert _grid(1) == (B, KH, TABLE)
    assert _grid(16) == (B, KH, TABLE // 16)
    assert _grid(5, jnp.int8) == (B, KH, TABLE // 8)  # int8 scales: whole 128-key lane tiles
    assert _grid(1000) == (B, KH, 1)


def test_tensor_parallel_int4_projection_matches_one_device():
    """QuantProj under tp=2 runs the int4 kernel per device on N-slices (shard_map); the result is
    the single-device one. Kernel in Pallas interpret mode on CPU devices."""
    import numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

    from puyu_jax.quant.int4 import quantize_int4
    from puyu_jax.quant.model import QuantProj, quant_weight_shardings, sharded_quant_matmul

    w = quantize_int4(jax.random.normal(jax.random.key(0), (256, 4, 64)), n_in=1)  # q_proj [d, heads, e]
    x = jax.random.normal(jax.random.key(1), (3, 256), jnp.float32)
    want = QuantProj(w, impl="reference")("td,dhe->the", x)
    mesh = jax.make_mesh((2,), ("tensor",), axis_types=(AxisType.Auto,), devices=jax.devices("cpu")[:2])
    for placed in (jax.device_put(w, NamedSharding(mesh, P())), jax.device_put(w, quant_weight_shardings(w, mesh))):
        got = jax.jit(lambda x, w: QuantProj(w, impl="pallas")("td,dhe->the", x))(x, placed)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-4)
    # as the engine places it: each device holds its half of N of every array
    assert {s.data.shape for s in placed.qweight.addressable_shards} == {(128, 128)}
    assert {s.data.shape for s in placed.scales.addressable_shards} == {(2, 128)}
    text = jax.jit(lambda x, w: sharded_quant_matmul(x, w, "pallas")).lower(x, placed).as_text()
    assert "shard_map" in text or "sdy.manual_computation" in text
