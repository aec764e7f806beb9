"""The train step: grad accumulation, NaN guard, weight-decay mask, schedules, z-loss, remat."""

import dataclasses

import jax
import numpy as np
import pytest

from puyu_jax.config import load_config
from puyu_jax.train.config import TrainConfig
from puyu_jax.train.step import Trainer, decay_mask, lr_schedule, model_flops_per_token


def _cfg(**over):
    base = {"model": "tiny", "batch_size": 8, "data": {"seq_len": 24}, "steps": 20, "parallel": {"data": 1}}
    return load_config(TrainConfig, base, [f"{k}={v}" for k, v in over.items()])


def _batch(seed=0, b=8, t=24):
    rng = np.random.default_rng(seed)
    seg = np.ones((b, t), np.int32)
    seg[:, 15:] = 2
    seg[0, 20:] = 0  # padding
    pos = np.concatenate([np.arange(15), np.arange(t - 15)])[None].repeat(b, 0)
    return {"tokens": rng.integers(0, 512, (b, t)), "segment_ids": seg, "positions": pos}


def _steps(cfg, n=2):
    tr = Trainer.create(cfg, jax.devices()[:1])
    state = tr.init_state()
    out = []
    for i in range(n):
        state, m = tr.step_fn(state, tr.shard_batch(_batch(i)))
        out.append(jax.device_get(m))
    return state, out


def test_grad_accumulation_equals_the_large_batch():
    s1, m1 = _steps(_cfg(grad_accum=1))
    s4, m4 = _steps(_cfg(grad_accum=4))
    for a, b in zip(m1, m4):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)
    for k in s1["params"]:
        np.testing.assert_allclose(s1["params"][k], s4["params"][k], atol=1e-6)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_policies_do_not_change_the_step(remat):
    _, ref = _steps(_cfg())
    _, got = _steps(_cfg(remat=remat))
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
        np.testing.assert_allclose(a["grad_norm"], b["grad_norm"], rtol=1e-5)


def test_nan_guard_skips_and_counts():
    cfg = _cfg()
    tr = Trainer.create(cfg, jax.devices()[:1])
    state = tr.init_state()
    before = jax.device_get(state["params"])
    poisoned = dict(state)
    poisoned["params"] = {k: v * np.nan if k == "final_norm/scale" else v for k, v in state["params"].items()}
    new, m = tr.step_fn(poisoned, tr.shard_batch(_batch()))
    assert not bool(m["finite"]) and int(new["skipped"]) == 1 and int(new["step"]) == 1
    assert np.isnan(np.asarray(new["params"]["final_norm/scale"])).all()  # left as it was: update dropped
    np.testing.assert_array_equal(np.asarray(new["params"]["embed/embedding"]), before["embed/embedding"])


def test_weight_decay_skips_norms_and_biases():
    mask = decay_mask({"a/kernel": 0, "a/bias": 0, "n/scale": 0, "embed/embedding": 0})
    assert mask == {"a/kernel": True, "a/bias": False, "n/scale": False, "embed/embedding": True}


def test_schedules_warm_up_then_decay():
    cfg = _cfg().optimizer
    for kind in ("cosine", "linear"):
        f = lr_schedule(dataclasses.replace(cfg, schedule=kind, warmup_steps=10), 110)
        assert float(f(0)) == 0.0 and abs(float(f(10)) - cfg.lr) < 1e-9
        assert abs(float(f(110)) - cfg.lr * cfg.min_lr_ratio) < 1e-6
        assert float(f(60)) < cfg.lr


def test_z_loss_adds_to_the_objective_only():
    _, plain = _steps(_cfg(**{"optimizer.warmup_steps": 0}))
    _, z = _steps(_cfg(z_loss=1e-2, **{"optimizer.warmup_steps": 0}))
    assert plain[0]["loss"] == z[0]["loss"]  # the reported loss is the cross-entropy
    assert plain[0]["grad_norm"] != z[0]["grad_norm"]  # the objective includes z-loss
    assert plain[1]["loss"] != z[1]["loss"]


def test_flops_per_token_counts_matmuls_and_causal_attention():
    cfg = _cfg().model
    n_matmul = 2 * (64 * 4 * 16 + 2 * 64 * 2 * 16 + 4 * 16 * 64 + 3 * 64 * 176) + 64 * 512
    assert model_flops_per_token(cfg, 24) == 6 * n_matmul + 6 * 2 * 4 * 16 * 24 + 6 * (5 * 64)  # + norm scales


def test_bf16_compute_keeps_fp32_master_weights_and_optimizer_state():
    state, m = _steps(_cfg(**{"model.dtype": "bfloat16"}), n=3)
    assert all(v.dtype == np.float32 for v in state["params"].values())
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state["opt_state"]) if x.ndim)
    _, ref = _steps(_cfg(), n=3)
    np.testing.assert_allclose([x["loss"] for x in m], [x["loss"] for x in ref], rtol=2e-2)
