"""Int4 models: forward equals the dequantized float model; save / load round trip."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.models import ModelConfig, init_model
from puyu_jax.quant.int4 import Int4Weight, quantize_int4
from puyu_jax.quant.model import (
    QuantProj,
    dequantized_model,
    is_quantized,
    load_quantized,
    quantize_model,
    save_quantized,
)

TINY = ModelConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4,
                   num_kv_heads=2, max_position_embeddings=256)


def _tokens(cfg, b=2, t=12, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, cfg.vocab_size, (b, t)))


@pytest.mark.parametrize("kv_heads,bias", [(2, True), (4, False)])
def test_int4_logits_equal_dequantized_float_model(kv_heads, bias):
    cfg = dataclasses.replace(TINY, num_kv_heads=kv_heads, qkv_bias=bias, o_bias=bias)
    model = init_model(cfg, seed=kv_heads)
    q = quantize_model(model, "rtn", group_size=32)  # K=48 pads to 64: exercises the padding
    assert is_quantized(q) and not is_quantized(model)
    assert isinstance(q.layers[0].attn.o_proj, QuantProj) and q.layers[0].attn.o_proj.kernel.get_value().n_in == 2
    tokens = _tokens(cfg)
    got, _ = q(tokens)
    ref, _ = dequantized_model(q)(tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=2e-5, rtol=1e-5)
    fp, _ = model(tokens)
    err = float(jnp.max(jnp.abs(got - fp)))
    assert 0 < err < 0.2 * float(jnp.max(jnp.abs(fp)))  # quantized, yet close


def test_pallas_kernel_path_matches_reference():
    # o_proj layout (two contracted axes, K=48 padded to 64) through the Pallas kernel in interpret mode
    w = np.random.default_rng(3).normal(0, 0.05, (4, 12, 32)).astype(np.float32)
    x = jnp.asarray(np.random.default_rng(4).normal(0, 1, (1, 3, 4, 12)).astype(np.float32))
    weight = quantize_int4(w, n_in=2, group_size=16)
    ref = QuantProj(weight, impl="reference")("bthe,hed->btd", x)
    got = QuantProj(weight, impl="pallas")("bthe,hed->btd", x)
    assert got.shape == (1, 3, 32)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(ref), np.einsum("bthe,hed->btd", np.asarray(x), np.asarray(weight.dequantize())),
                               atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(tmp_path):
    cfg = dataclasses.replace(TINY, qkv_bias=True)
    q = quantize_model(init_model(cfg, seed=5), "rtn", group_size=16)
    save_quantized(q, tmp_path / "q", method="rtn", extra={"source": "tiny"})
    loaded = load_quantized(tmp_path / "q")
    assert loaded.cfg == cfg and loaded.tokenizer is None
    a = q.layers[1].mlp.down_proj.kernel.get_value()
    b = loaded.model.layers[1].mlp.down_proj.kernel.get_value()
    assert isinstance(b, Int4Weight) and (b.shape, b.n_in, b.group_size) == (a.shape, a.n_in, a.group_size)
    for f in ("qweight", "scales", "zeros"):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)))
    tokens = _tokens(cfg)
    np.testing.assert_array_equal(np.asarray(q(tokens)[0]), np.asarray(loaded.model(tokens)[0]))

    from puyu_jax.pretrained import load_model_config, load_pretrained

    pre = load_pretrained(tmp_path / "q")
    assert is_quantized(pre.model) and load_model_config(tmp_path / "q") == cfg


@pytest.mark.parametrize("group_size", [0, 16])  # per output channel; groups of 16 along K
def test_int8_weight_only_model(tmp_path, group_size):
    from puyu_jax.quant.int4 import Int8Weight, quantize_int8

    w = np.random.default_rng(7).normal(0, 0.05, (48, 40)).astype(np.float32)
    qw = quantize_int8(w, group_size=group_size)
    g = group_size or 48
    s_ref = np.abs(w.reshape(48 // g, g, 40)).max(axis=1) / 127  # numpy reference RTN
    q_ref = np.clip(np.round(w.reshape(48 // g, g, 40) / s_ref[:, None]), -127, 127).reshape(48, 40)
    np.testing.assert_allclose(np.asarray(qw.scales), s_ref, rtol=1e-6)
    assert np.mean(np.asarray(qw.qweight) == q_ref) > 0.999
    assert np.all(np.abs(np.asarray(qw.dequantize()) - w) <= np.repeat(s_ref, g, 0) / 2 + 1e-7)

    cfg = dataclasses.replace(TINY, qkv_bias=True)
    model = init_model(cfg, seed=6)
    q8 = quantize_model(model, "rtn", group_size=group_size, bits=8)
    assert isinstance(q8.layers[0].mlp.up_proj.kernel.get_value(), Int8Weight)
    tokens = _tokens(cfg)
    got, _ = q8(tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(dequantized_model(q8)(tokens)[0]), atol=2e-5, rtol=1e-5)
    fp, _ = model(tokens)
    q4, _ = quantize_model(model, "rtn", group_size=16)(tokens)
    err8, err4 = float(jnp.max(jnp.abs(got - fp))), float(jnp.max(jnp.abs(q4 - fp)))
    assert 0 < err8 < err4 / 4  # int8 is several times closer to the float model than int4
    save_quantized(q8, tmp_path / "q8", method="rtn")
    loaded = load_quantized(tmp_path / "q8")
    b = loaded.model.layers[1].attn.o_proj.kernel.get_value()
    assert isinstance(b, Int8Weight) and b.group_size == (group_size or 48) and b.n_in == 2
    np.testing.assert_array_equal(np.asarray(loaded.model(tokens)[0]), np.asarray(got))


@pytest.mark.parametrize("kind,group_size", [("min", 32), ("zero", 32), ("min", 16)])
def test_a_model_already_on_a_4bit_grid_loses_nothing_when_its_grid_is_matched(kind, group_size):
    """The perplexity table's finding, on a tiny model: a float model whose weights already lie on a
    4-bit grid (like SmolLM2's GGUF, Q4_1 = kind "min", 32 per group) is re-quantized exactly when
    the grid's kind and group match, and rounded a second time when the group does not."""
    cfg = dataclasses.replace(TINY, hidden_size=64, intermediate_size=128)
    on_grid = dequantized_model(quantize_model(init_model(cfg, seed=3), "rtn", group_size=32, kind="min"))
    again = dequantized_model(quantize_model(on_grid, "rtn", group_size=group_size, kind=kind))
    tokens = _tokens(cfg, t=16)
    ref, _ = on_grid(tokens)
    got, _ = again(tokens)
    err = float(jnp.max(jnp.abs(got - ref)))
    if (kind, group_size) == ("min", 32):
        assert err < 1e-4, err  # the same codes: nothing lost
    else:  # integer zero points or finer groups do not contain the grid's values exactly
        assert err > 1e-3, err
