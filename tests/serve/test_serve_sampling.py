"""Per-row sampling stages against numpy definitions, on fresh random logits."""

import jax
import jax.numpy as jnp
import numpy as np

from puyu_jax.serve.sampling import SamplingArrays, SamplingFlags, _filter, apply_penalties, sample, seed_key_data


def _arrays(b, **kw):
    base = dict(temperature=np.ones(b, np.float32), top_k=np.zeros(b, np.int32), top_p=np.ones(b, np.float32),
                min_p=np.zeros(b, np.float32), repetition_penalty=np.ones(b, np.float32),
                presence_penalty=np.zeros(b, np.float32), frequency_penalty=np.zeros(b, np.float32),
                key_data=np.stack([seed_key_data(i) for i in range(b)]), step=np.zeros(b, np.int32),
                history=np.full((b, 1), -1, np.int32), history_is_output=np.zeros((b, 1), bool))
    base.update(kw)
    return SamplingArrays(**{k: jnp.asarray(v) for k, v in base.items()})


def _keep_numpy(row, top_k, top_p, min_p):
    order = np.argsort(-row, kind="stable")
    keep = np.ones_like(row, bool)
    if top_k:
        keep &= row >= row[order[top_k - 1]]
    if top_p < 1:
        p = np.exp(row - row.max())
        p /= p.sum()
        cum = np.cumsum(p[order])
        n = min(int(np.sum(cum < top_p)) + 1, len(row))
        keep &= row >= row[order[n - 1]]
    if min_p > 0:
        p = np.exp(row - row.max())
        keep &= p >= min_p * p.max() * (1 - 1e-6)
    return keep


def test_filters_match_numpy_per_row():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 300)).astype(np.float32) * 3
    top_k = np.array([0, 5, 0, 40, 0, 7], np.int32)
    top_p = np.array([1.0, 1.0, 0.8, 0.5, 1.0, 0.9], np.float32)
    min_p = np.array([0.0, 0.0, 0.0, 0.0, 0.1, 0.05], np.float32)
    out = np.asarray(_filter(jnp.asarray(logits), _arrays(6, top_k=top_k, top_p=top_p, min_p=min_p)))
    for i in range(6):
        want = _keep_numpy(logits[i], top_k[i], top_p[i], min_p[i])
        np.testing.assert_array_equal(np.isfinite(out[i]), want, err_msg=f"row {i}")


def test_penalties_match_their_definitions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 50)).astype(np.float32)
    history = np.array([[3, 3, 7, 9, -1], [1, 2, 2, 2, 4]], np.int32)
    is_out = np.array([[False, True, True, True, False], [False, False, True, True, True]])
    s = _arrays(2, history=history, history_is_output=is_out, repetition_penalty=np.array([1.5, 1.0], np.float32),
                presence_penalty=np.array([0.0, 0.7], np.float32), frequency_penalty=np.array([0.3, 0.2], np.float32))
    out = np.asarray(apply_penalties(jnp.asarray(logits), s))
    want = logits.copy()
    for b in range(2):
        seen = {int(t) for t in history[b] if t >= 0}
        for t in seen:
            r = float(s.repetition_penalty[b])
            want[b, t] = want[b, t] / r if want[b, t] > 0 else want[b, t] * r
        counts = np.bincount(history[b][is_out[b] & (history[b] >= 0)], minlength=50)
        want[b] -= float(s.frequency_penalty[b]) * counts + float(s.presence_penalty[b]) * (counts > 0)
    np.testing.assert_allclose(out, want, rtol=1e-6)


def test_sampling_respects_filters_and_follows_the_distribution():
    rng = np.random.default_rng(2)
    row = rng.normal(size=(40,)).astype(np.float32)
    b = 2000
    logits = jnp.asarray(np.tile(row, (b, 1)))
    s = _arrays(b, top_k=np.full(b, 5, np.int32), key_data=np.stack([seed_key_data(i) for i in range(b)]))
    toks = np.asarray(jax.jit(lambda l, s: sample(l, s, SamplingFlags(sample=True, filter=True)))(logits, s)["tokens"])
    top5 = np.argsort(-row)[:5]
    assert set(toks) <= set(top5)
    p = np.exp(row[top5] - row[top5].max())
    p /= p.sum()
    freq = np.array([(toks == t).mean() for t in top5])
    np.testing.assert_allclose(freq, p, atol=0.04)
    greedy = _arrays(b, temperature=np.zeros(b, np.float32))
    g = np.asarray(sample(logits, greedy, SamplingFlags(sample=True))["tokens"])
    assert (g == np.argmax(row)).all()
