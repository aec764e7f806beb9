"""Internal consistency of the transformer: cache vs full forward, packing, dtypes, metadata."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.config import load_config
from puyu_jax.models import ModelConfig, init_cache, init_model, logical_axes, param_shapes
from puyu_jax.models.info import count_params

REPO = Path(__file__).resolve().parents[2]
TINY = ModelConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4,
                   num_kv_heads=2, max_position_embeddings=256)

# Published sizes (model cards / papers), in parameters.
PUBLISHED = {
    "llama2-7b": 6.74e9,
    "llama3-8b": 8.03e9,
    "llama3.1-8b": 8.03e9,
    "qwen2-7b": 7.62e9,
    "mistral-7b": 7.24e9,
    "internlm-7b": 7.32e9,
    "internlm-20b": 20.1e9,
    "internlm2-7b": 7.74e9,
    "internlm2-20b": 19.86e9,
    "smollm2-135m": 134.5e6,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published_sizes(name):
    cfg = load_config(ModelConfig, REPO / "configs" / "models" / f"{name}.yaml")
    total = count_params(cfg)["total"]
    assert abs(total - PUBLISHED[name]) / PUBLISHED[name] < 0.005, f"{name}: {total:,}"


def test_every_shipped_model_config_loads():
    for path in sorted((REPO / "configs" / "models").glob("*.yaml")):
        cfg = load_config(ModelConfig, path)
        assert cfg.num_heads % cfg.num_kv_heads == 0


def test_every_parameter_has_logical_axes():
    cfg = dataclasses.replace(TINY, qkv_bias=True, o_bias=True)
    axes, shapes = logical_axes(cfg), param_shapes(cfg)
    assert axes.keys() == shapes.keys()
    known = {"vocab", "embed", "heads", "kv_heads", "head_dim", "mlp", "norm"}
    for name, names in axes.items():
        assert len(names) == len(shapes[name].shape), name
        assert set(names) <= known, (name, names)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_prefill_then_decode_equals_full_forward(kv_heads):
    cfg = dataclasses.replace(TINY, num_kv_heads=kv_heads)
    model = init_model(cfg, seed=kv_heads)
    rng = np.random.default_rng(kv_heads)
    b, t, extra = 3, 9, 5
    full = rng.integers(0, cfg.vocab_size, (b, t + extra))
    pads = np.array([0, 3, 6])
    mask = np.ones((b, t + extra), np.int32)
    for i, p in enumerate(pads):
        mask[i, :p] = 0
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    ref, _ = model(jnp.asarray(full), positions=jnp.asarray(positions), segment_ids=jnp.asarray(mask))

    cache = init_cache(cfg, b, 32, starts=pads)
    logits, cache = model(jnp.asarray(full[:, :t]), cache=cache)
    got = [logits]
    for j in range(t, t + extra):
        step, cache = model(jnp.asarray(full[:, j:j + 1]), cache=cache)
        got.append(step)
    got = np.concatenate([np.asarray(x) for x in got], axis=1)
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], np.asarray(ref)[valid], atol=2e-5, rtol=1e-5)
    assert int(cache.length) == t + extra


def test_packed_segments_do_not_attend_across_documents():
    model = init_model(TINY, seed=3)
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, TINY.vocab_size, 7), rng.integers(0, TINY.vocab_size, 5)
    packed = np.concatenate([a, b, [0, 0]])[None]
    seg = np.array([[1] * 7 + [2] * 5 + [0, 0]])
    pos = np.array([list(range(7)) + list(range(5)) + [0, 0]])
    out, _ = model(jnp.asarray(packed), positions=jnp.asarray(pos), segment_ids=jnp.asarray(seg))
    ra, _ = model(jnp.asarray(a[None]))
    rb, _ = model(jnp.asarray(b[None]))
    np.testing.assert_allclose(np.asarray(out)[0, :7], np.asarray(ra)[0], atol=2e-5)
    np.testing.assert_allclose(np.asarray(out)[0, 7:12], np.asarray(rb)[0], atol=2e-5)


def test_bfloat16_compute_tracks_float32():
    model32 = init_model(TINY, seed=5)
    cfg16 = dataclasses.replace(TINY, dtype="bfloat16", param_dtype="bfloat16")
    from puyu_jax.models import from_flat, to_flat

    model16 = from_flat(cfg16, to_flat(model32))
    tokens = jnp.asarray(np.random.default_rng(5).integers(0, TINY.vocab_size, (2, 16)))
    l32, _ = model32(tokens)
    l16, _ = model16(tokens)
    assert l16.dtype == jnp.float32  # logits are always returned in fp32
    assert jax.tree.leaves(model16)[0].dtype == jnp.bfloat16
    err = float(jnp.abs(l16 - l32).max() / jnp.abs(l32).max())
    assert err < 5e-2, err
    assert (np.asarray(l16.argmax(-1)) == np.asarray(l32.argmax(-1))).mean() > 0.8


def test_remat_gives_same_loss_and_grads():
    from flax import nnx

    model = init_model(TINY, seed=6)
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, TINY.vocab_size, (2, 12)))

    def loss(m, remat):
        logits, _ = m(tokens, remat=remat)
        return -jnp.mean(jax.nn.log_softmax(logits)[:, :-1].max(-1))

    l0, g0 = nnx.value_and_grad(lambda m: loss(m, None))(model)
    l1, g1 = nnx.value_and_grad(lambda m: loss(m, True))(model)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("kv_heads", [4, 1])
def test_dot_product_attention_impl_matches_einsum(kv_heads):
    """jax.nn.dot_product_attention (cuDNN flash attention on GPU) on packed, padded sequences."""
    cfg = dataclasses.replace(TINY, num_kv_heads=kv_heads)
    model = init_model(cfg, seed=7)
    from puyu_jax.models import from_flat, to_flat

    other = from_flat(dataclasses.replace(cfg, attention_impl="dot_product"), to_flat(model))
    rng = np.random.default_rng(7)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (2, 16)))
    seg = jnp.asarray([[1] * 9 + [2] * 5 + [0] * 2, [1] * 16])
    pos = jnp.asarray([list(range(9)) + list(range(5)) + [0, 0], list(range(16))])
    a, _ = model(tokens, positions=pos, segment_ids=seg)
    b, _ = other(tokens, positions=pos, segment_ids=seg)
    valid = np.asarray(seg) > 0
    np.testing.assert_allclose(np.asarray(b)[valid], np.asarray(a)[valid], atol=2e-5)
