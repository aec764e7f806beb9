"""Sampling and the batched KV-cache generator on a tiny random model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.generate import Generator, SamplingConfig, _decode, sample_logits
from puyu_jax.models import ModelConfig, init_model, to_flat

TINY = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                   num_kv_heads=2, max_position_embeddings=256)


def _draws(logits, n, **knobs):
    keys = jax.random.split(jax.random.key(0), n)
    f = jax.vmap(lambda k: sample_logits(logits, k, knobs.get("temperature", 1.0), knobs.get("top_k", 0),
                                         knobs.get("top_p", 1.0)))
    return np.asarray(f(keys))[:, 0]


def test_greedy_is_argmax():
    logits = jax.random.normal(jax.random.key(1), (4, 50))
    got = sample_logits(logits, jax.random.key(0), 0.0, 0, 1.0)
    np.testing.assert_array_equal(got, np.argmax(logits, -1))


def test_top_k_and_top_p_restrict_the_support():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(probs))[None]
    assert set(_draws(logits, 400, top_k=1)) == {0}
    assert set(_draws(logits, 400, top_k=2)) == {0, 1}
    assert set(_draws(logits, 400, top_p=0.7)) == {0, 1}  # 0.5 < 0.7 <= 0.8
    assert set(_draws(logits, 400, top_p=0.5)) == {0}
    assert set(_draws(logits, 2000, top_p=0.96)) == {0, 1, 2, 3}


def test_temperature_sampling_follows_the_distribution():
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    draws = _draws(jnp.log(jnp.asarray(probs))[None], 8000)
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, probs, atol=0.02)
    # temperature 0.5 sharpens: p^2 renormalised
    sharp = probs**2 / (probs**2).sum()
    freq = np.bincount(_draws(jnp.log(jnp.asarray(probs))[None], 8000, temperature=0.5), minlength=4) / 8000
    np.testing.assert_allclose(freq, sharp, atol=0.02)


def test_sampling_config_rejects_bad_values():
    for bad in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


@pytest.fixture(scope="module")
def gen():
    return Generator(init_model(TINY, seed=0))


def test_batched_generation_equals_one_by_one(gen):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, TINY.vocab_size, n).tolist() for n in (3, 11, 7)]
    sampling = SamplingConfig(max_new_tokens=10)
    batched = gen.generate(prompts, sampling)
    for p, out in zip(prompts, batched):
        assert gen.generate([p], sampling)[0] == out


def test_seeded_sampling_is_reproducible(gen):
    prompts = [[5, 6, 7], [8, 9]]
    s = SamplingConfig(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)
    a, b = gen.generate(prompts, s), gen.generate(prompts, s)
    c = gen.generate(prompts, dataclasses.replace(s, seed=8))
    assert a == b and a != c


def test_stop_ids_end_a_row_early(gen):
    prompts = [[5, 6, 7], [8, 9, 10]]
    free = gen.generate(prompts, SamplingConfig(max_new_tokens=8))
    stop = free[0][2]
    stopped = gen.generate(prompts, SamplingConfig(max_new_tokens=8), stop_ids=[stop])
    assert stopped[0] == free[0][: free[0].index(stop) + 1]
    expected_1 = free[1][: free[1].index(stop) + 1] if stop in free[1] else free[1]
    assert stopped[1] == expected_1


def test_steady_state_generation_does_not_recompile(gen):
    prompts = [[5, 6, 7, 8]]
    gen.generate(prompts, SamplingConfig(max_new_tokens=6))
    before = _decode._cache_size()
    for n in (2, 3, 5):  # other prompt lengths in the same bucket
        gen.generate([list(range(3, 3 + n))], SamplingConfig(max_new_tokens=6))
    assert _decode._cache_size() == before


def test_generate_sweep_runs_each_point_once(tmp_path, smollm2_gguf):
    """`puyu sweep` over the real generate run kind: hash-named dirs, cached on re-run."""
    from puyu_jax.checkpoint import save_checkpoint
    from puyu_jax.sweep import run_sweep
    from puyu_jax.tokenizer import tokenizer_from_gguf

    tok = tokenizer_from_gguf(smollm2_gguf)
    cfg = dataclasses.replace(TINY, vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, chat_template="chatml")
    tok.save(tmp_path / "tok")
    save_checkpoint(tmp_path / "ckpt", cfg, {k: np.asarray(v) for k, v in to_flat(init_model(cfg)).items()},
                    tokenizer_files={p.name: p for p in (tmp_path / "tok").iterdir()})
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"run: generate\noverrides: [model={tmp_path / 'ckpt'}, sampling.max_new_tokens=4]\n"
        f"grid:\n  sampling.temperature: [0.0, 1.0]\nout_dir: {tmp_path / 'out'}\n"
    )
    rows = run_sweep(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        d = tmp_path / "out" / r["hash"]
        assert (d / "DONE").exists() and (d / "outputs.jsonl").exists() and (d / "config.yaml").exists()
    assert [r["status"] for r in run_sweep(sweep)] == ["cached", "cached"]
