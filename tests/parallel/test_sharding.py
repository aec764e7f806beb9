"""Presets on 8 CPU devices: same losses as one device, expected shardings, memory that shrinks."""

import jax
import numpy as np
import pytest

from puyu_jax.config import load_config
from puyu_jax.parallel import ParallelConfig, ShardingRules, build_mesh, per_device_bytes, preset_rules
from puyu_jax.train.config import TrainConfig
from puyu_jax.train.step import Trainer

LAYOUTS = {
    "dp": {"data": 8},
    "zero1": {"data": 1, "fsdp": 8},
    "zero2": {"data": 2, "fsdp": 4},
    "zero3": {"data": 1, "fsdp": 8},
    "tp": {"data": 4, "tensor": 2},
    "fsdp_tp": {"data": 1, "fsdp": 4, "tensor": 2},
    "hybrid": {"devices_per_node": 4},
}
KERNEL = "layers/0/mlp/up_proj/kernel"  # [embed, mlp]


def _cfg(preset="dp", **layout):
    over = [f"parallel.preset={preset}"] + [f"parallel.{k}={v}" for k, v in layout.items()]
    return load_config(TrainConfig, {"model": "tiny", "batch_size": 8, "data": {"seq_len": 32}, "steps": 10}, over)


def _batches(n=3):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        t = rng.integers(0, 512, (8, 32))
        seg = np.ones_like(t)
        seg[:, 20:] = 2  # two packed documents per row
        pos = np.concatenate([np.arange(20), np.arange(12)])[None].repeat(8, 0)
        out.append({"tokens": t, "segment_ids": seg, "positions": pos})
    return out


def _run(cfg, devices=None):
    tr = Trainer.create(cfg, devices)
    state = tr.init_state()
    bytes_ = per_device_bytes(state["params"]) + per_device_bytes(state["opt_state"])
    losses = []
    for b in _batches():
        state, m = tr.step_fn(state, tr.shard_batch(b))
        losses.append(float(m["loss"]))
    return tr, state, losses, bytes_


@pytest.fixture(scope="module")
def single():
    return _run(_cfg(data=1), jax.devices()[:1])


@pytest.mark.parametrize("preset", sorted(LAYOUTS))
def test_preset_matches_one_device(preset, single):
    _, _, ref, ref_bytes = single
    tr, state, losses, bytes_ = _run(_cfg(preset, **LAYOUTS[preset]))
    assert tr.mesh.size == 8
    np.testing.assert_allclose(losses, ref, atol=1e-5, rtol=0)

    spec = state["params"][KERNEL].sharding.spec
    mu = state["opt_state"][1][0].mu[KERNEL]  # chain(clip, adamw): adamw's ScaleByAdamState
    expected_param = {"dp": (None, None), "zero1": (None, None), "zero2": (None, None), "zero3": ("fsdp", None),
                      "hybrid": ("fsdp", None), "tp": (None, "tensor"), "fsdp_tp": ("fsdp", "tensor")}[preset]
    assert tuple(spec) + (None,) * (2 - len(spec)) == expected_param
    if preset in ("zero1", "zero2"):
        assert mu.sharding.spec[0] == "fsdp"  # optimizer state sharded, params not
    # memory per device shrinks as each preset promises (tiny shapes: some dims replicate)
    shrink = {"dp": 1.0, "zero1": 0.5, "zero2": 0.55, "zero3": 0.15, "hybrid": 0.3, "tp": 0.55, "fsdp_tp": 0.15}[preset]
    assert bytes_ <= shrink * ref_bytes + 1, (preset, bytes_, ref_bytes)


def test_hybrid_mesh_keeps_fsdp_inside_a_node():
    mesh = build_mesh(ParallelConfig(preset="hybrid", devices_per_node=4))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "sequence": 1}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)[:, :, 0, 0]
    assert ids.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # each fsdp group is one node's devices


def test_rules_validate_and_replicate_indivisible_dims():
    with pytest.raises(ValueError, match="unknown mesh axis"):
        ShardingRules((("embed", "model"),))
    mesh = build_mesh(ParallelConfig(data=1, fsdp=8))
    rules, _ = preset_rules("zero3")
    assert tuple(rules.spec(("embed", "mlp"), (64, 176), mesh)) == ("fsdp", None)
    assert tuple(rules.spec(("embed",), (12,), mesh)) == (None,)  # 12 % 8 != 0: replicated
