"""GPTQ: equals RTN under an identity Hessian, beats it with correlated inputs, and its packed
weights run through the same int4 kernels (Pallas in interpret mode and the plain-JAX twin)."""

import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.kernels.int4_matmul import int4_matmul, unpack_int4
from puyu_jax.models import ModelConfig, init_model
from puyu_jax.quant.gptq import gptq_int4
from puyu_jax.quant.int4 import quantize_int4
from puyu_jax.quant.model import dequantized_model, load_quantized, quantize_model, save_quantized

KINDS = ("zero", "min", "sym")


def correlated(rng, n, k, mix):
    """n inputs of k features with correlated channels (x = z @ mix) and a few loud ones."""
    x = rng.standard_normal((n, k)).astype(np.float32) @ mix
    x[:, :3] *= 4.0
    return x


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k,group", [(96, 32), (80, 32), (64, 16)])  # K = 80: a last, partial group
def test_identity_hessian_is_rtn(kind, k, group):
    w = np.random.default_rng(0).normal(0, 0.05, (k, 24)).astype(np.float32)
    rtn = quantize_int4(w, 1, group, kind)
    for act_order in (False, True):
        gptq = gptq_int4(w, np.eye(k, dtype=np.float32), group_size=group, kind=kind, act_order=act_order)
        assert gptq.kind == rtn.kind == kind and gptq.group_size == group
        np.testing.assert_array_equal(np.asarray(gptq.qweight), np.asarray(rtn.qweight))
        np.testing.assert_allclose(np.asarray(gptq.scales), np.asarray(rtn.scales), rtol=1e-6)
        for off in ("zeros", "mins"):
            a, b = getattr(gptq, off), getattr(rtn, off)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_rtn_on_fresh_correlated_inputs(kind, act_order):
    rng = np.random.default_rng(1)
    k, n = 128, 48
    mix = np.eye(k, dtype=np.float32) + 0.3 * rng.standard_normal((k, k)).astype(np.float32)
    w = rng.normal(0, 0.05, (k, n)).astype(np.float32)
    calib, fresh = correlated(rng, 2048, k, mix), correlated(rng, 1024, k, mix)
    gptq = gptq_int4(w, calib.T @ calib, group_size=32, kind=kind, act_order=act_order)
    rtn = quantize_int4(w, 1, 32, kind)
    ref = fresh @ w
    err = {name: float(np.mean((fresh @ np.asarray(q.dequantize()) - ref) ** 2)) for name, q in
           (("gptq", gptq), ("rtn", rtn))}
    # measured: GPTQ's output error is 0.50-0.55x RTN's here, for every kind, with and without act-order
    assert err["gptq"] < 0.7 * err["rtn"], err
    codes = np.asarray(unpack_int4(gptq.qweight))
    assert codes.min() >= 0 and codes.max() <= 15 and codes.max() > 12  # the whole 4-bit range is used


@pytest.mark.parametrize("kind", KINDS)
def test_gptq_weights_run_through_the_int4_kernels(kind):
    rng = np.random.default_rng(2)
    k, n, group = 96, 64, 32
    w = rng.normal(0, 0.05, (k, n)).astype(np.float32)
    x = rng.standard_normal((256, k)).astype(np.float32)
    q = gptq_int4(w, x.T @ x, group_size=group, kind=kind, act_order=True)
    xs = jnp.asarray(rng.standard_normal((8, k)).astype(np.float32))
    want = np.asarray(xs @ q.dequantize_2d())
    offsets = {"zeros": q.zeros, "mins": q.mins}
    twin = int4_matmul(xs, q.qweight, q.scales, **offsets, group_size=group, impl="reference")
    kernel = int4_matmul(xs, q.qweight, q.scales, **offsets, group_size=group, impl="pallas", block_n=64, block_k=96)
    np.testing.assert_allclose(np.asarray(twin), want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(kernel), want, atol=1e-4, rtol=1e-4)


CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=2, max_position_embeddings=128)


def test_gptq_model_beats_rtn_and_round_trips(tmp_path):
    model = init_model(CFG, 0)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, CFG.vocab_size, (4, 64))
    held_out = jnp.asarray(rng.integers(0, CFG.vocab_size, (4, 64)))
    report = {}
    gptq = quantize_model(model, "gptq", 32, calib, report=report, kind="min")
    assert [r["layer"] for r in report["layers"]] == [0, 1] and report["calib_tokens"] == 256
    assert set(report["layers"][0]) == {"layer", "q", "o", "gate", "down"}
    rtn = quantize_model(model, "rtn", 32, kind="min")
    fp, _ = model(held_out)
    err = {name: float(jnp.mean((m(held_out)[0] - fp) ** 2)) for name, m in (("gptq", gptq), ("rtn", rtn))}
    assert err["gptq"] < 0.8 * err["rtn"], err
    got = gptq.layers[1].mlp.down_proj.kernel.get_value()
    assert got.kind == "min" and got.group_size == 32
    # the saved directory gives the same logits
    save_quantized(gptq, tmp_path / "q", method="gptq")
    loaded = load_quantized(tmp_path / "q").model
    np.testing.assert_allclose(np.asarray(loaded(held_out)[0]), np.asarray(gptq(held_out)[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(dequantized_model(gptq)(held_out)[0]), np.asarray(gptq(held_out)[0]),
                               atol=1e-4)


def test_gptq_needs_calibration_and_known_kind():
    model = init_model(CFG, 0)
    with pytest.raises(ValueError, match="calib_tokens"):
        quantize_model(model, "gptq", 32)
    with pytest.raises(ValueError, match="kind='nf4'"):
        quantize_model(model, "rtn", 32, kind="nf4")
