"""AWQ: scale folding keeps the float function; with outlier channels AWQ beats RTN."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.models import ModelConfig, init_model
from puyu_jax.quant.awq import AWQConfig, apply_awq, calibration_tokens
from puyu_jax.quant.model import quantize_model

CFG = ModelConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                  num_kv_heads=4, max_position_embeddings=256)


def outlier_model(cfg, seed=0):
    """A random model with a few strong input channels: residual-stream channels (through the
    embedding) feed q/k/v and gate/up; up_proj columns feed down_proj."""
    model = init_model(cfg, seed)
    rng = np.random.default_rng(seed)
    emb = np.array(model.embed.embedding[...])
    emb[:, rng.choice(cfg.hidden_size, 3, replace=False)] *= 30
    model.embed.embedding.set_value(jnp.asarray(emb))
    for layer in model.layers:
        up = np.array(layer.mlp.up_proj.kernel[...])
        up[:, rng.choice(cfg.intermediate_size, 3, replace=False)] *= 10
        layer.mlp.up_proj.kernel.set_value(jnp.asarray(up))
    return model


@pytest.mark.parametrize("kv_heads,bias", [(4, True), (2, False)])  # MHA folds into v_proj; GQA skips o
def test_scale_folding_leaves_float_model_unchanged(kv_heads, bias):
    cfg = dataclasses.replace(CFG, num_kv_heads=kv_heads, qkv_bias=bias)
    model = outlier_model(cfg, seed=1)
    rng = np.random.default_rng(1)
    scaled, report = apply_awq(model, rng.integers(0, cfg.vocab_size, (2, 32)),
                               AWQConfig(group_size=32, clip=False, n_grid=5))
    groups = {g for row in report["layers"] for g in row if g != "layer"}
    assert groups == ({"qkv", "o", "gate_up", "down"} if kv_heads == 4 else {"qkv", "gate_up", "down"})
    for row in report["layers"]:  # s = 1 is a candidate: the search never loses to RTN on its own loss
        for g in groups:
            assert row[g]["loss"] <= row[g]["rtn_loss"]
    norms = np.asarray(scaled.layers[0].mlp_norm.scale[...])
    assert not np.allclose(norms, np.asarray(model.layers[0].mlp_norm.scale[...]))  # something was folded
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 16)))
    np.testing.assert_allclose(np.asarray(scaled(tokens)[0]), np.asarray(model(tokens)[0]), atol=1e-5, rtol=0)


def test_awq_beats_rtn_on_output_mse_with_outlier_channels():
    model = outlier_model(CFG, seed=0)
    rng = np.random.default_rng(0)
    calib, held_out = rng.integers(0, CFG.vocab_size, (4, 64)), jnp.asarray(rng.integers(0, CFG.vocab_size, (4, 64)))
    fp, _ = model(held_out)
    rtn, _ = quantize_model(model, "rtn", 32)(held_out)
    awq, _ = quantize_model(model, "awq", 32, calib)(held_out)
    rtn_mse, awq_mse = float(jnp.mean((rtn - fp) ** 2)), float(jnp.mean((awq - fp) ** 2))
    assert awq_mse < 0.75 * rtn_mse, (awq_mse, rtn_mse)


def test_calibration_tokens_cut_windows():
    class Bytes:
        def encode(self, text):
            return list(text.encode())

    toks = calibration_tokens(Bytes(), ["abcdefgh" * 5, "xyz" * 10], n_samples=3, seq_len=16)
    assert toks.shape == (3, 16) and toks.dtype == np.int32
    assert bytes(toks.reshape(-1).tolist()).startswith(b"abcdefgh" * 5 + b"xyz")
