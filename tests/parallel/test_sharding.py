"""Presets on 8 CPU devices: same losses as one device, the shardings each name promises,
compiled programs in which ZeRO-1, -2 and -3 differ, and errors on indivisible dimensions."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.config import load_config
from puyu_jax.finetune.estimate import estimate_memory
from puyu_jax.models import ModelConfig
from puyu_jax.parallel import ParallelConfig, ShardingPlan, ShardingRules, build_mesh, per_device_bytes
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
KERNEL = "layers/0/mlp/up_proj/kernel"  # [embed 64, mlp 176]

# (params, grads, optimizer state) spec of KERNEL per preset
EXPECTED = {
    "dp": ((None, None), (None, None), (None, None)),
    "zero1": ((None, None), (None, None), ("fsdp", None)),
    "zero2": ((None, None), ("fsdp", None), ("fsdp", None)),
    "zero3": (("fsdp", None), ("fsdp", None), ("fsdp", None)),
    "hybrid": (("fsdp", None), ("fsdp", None), ("fsdp", None)),
    "tp": ((None, "tensor"), (None, "tensor"), (None, "tensor")),
    "fsdp_tp": (("fsdp", "tensor"), ("fsdp", "tensor"), ("fsdp", "tensor")),
}


def _cfg(preset="dp", batch_size=8, grad_accum=1, model="tiny", **layout):
    over = [f"parallel.preset={preset}"] + [f"parallel.{k}={v}" for k, v in layout.items()]
    return load_config(TrainConfig, {"model": model, "batch_size": batch_size, "grad_accum": grad_accum,
                                     "data": {"seq_len": 32}, "steps": 10}, over)


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


def _spec2(sharding):
    spec = tuple(sharding.spec)
    return spec + (None,) * (2 - len(spec))


@pytest.fixture(scope="module")
def single():
    return _run(_cfg(data=1), jax.devices()[:1])


@pytest.mark.parametrize("preset", sorted(LAYOUTS))
def test_preset_matches_one_device(preset, single):
    _, _, ref, ref_bytes = single
    tr, state, losses, bytes_ = _run(_cfg(preset, **LAYOUTS[preset]))
    assert tr.mesh.size == 8
    np.testing.assert_allclose(losses, ref, atol=1e-5, rtol=0)

    mu = state["opt_state"][1][0].mu[KERNEL]  # chain(clip, adamw): adamw's ScaleByAdamState
    want_p, want_g, want_o = EXPECTED[preset]
    assert _spec2(state["params"][KERNEL].sharding) == want_p
    assert _spec2(tr.grad_shardings[KERNEL]) == want_g
    assert _spec2(mu.sharding) == want_o
    # memory per device shrinks as each preset promises (params + optimizer state)
    shrink = {"dp": 1.0, "zero1": 0.5, "zero2": 0.55, "zero3": 0.15, "hybrid": 0.3, "tp": 0.55, "fsdp_tp": 0.15}[preset]
    assert bytes_ <= shrink * ref_bytes + 1, (preset, bytes_, ref_bytes)


# ----------------------------------------------------------------------------- compiled programs


def _compile(preset):
    """The jit'd step for `preset` on fsdp=8, compiled from abstract state (2 micro-batches of 8)."""
    tr = Trainer.create(_cfg(preset, batch_size=16, grad_accum=2, data=1, fsdp=8))
    batch = {k: jax.ShapeDtypeStruct((2, 8, 32), jnp.int32, sharding=tr.batch_sharding)
             for k in ("tokens", "segment_ids", "positions")}
    return tr, tr.jit_step.lower(tr.abstract_state(), batch).compile()


def _count(hlo: str, op: str) -> int:
    return len(re.findall(rf" {op}(-start)?\(", hlo))


@pytest.fixture(scope="module")
def compiled():
    return {p: _compile(p) for p in ("zero1", "zero2", "zero3")}


def test_zero_stages_compile_to_what_their_names_promise(compiled):
    """ZeRO-1: gradients all-reduced and kept whole, optimizer state sharded. ZeRO-2: gradients
    reduce-scattered, so each device keeps only its shard. ZeRO-3: parameters sharded too.

    XLA:CPU writes a reduce-scatter as an all-reduce followed by a slice to the local shard
    (the pass that fuses the two runs in the GPU pipeline), so the compiled programs are
    told apart by their collectives and by what each device holds: parameter and optimizer
    bytes (arguments) and gradient buffers (temporaries).
    """
    hlo = {p: c.as_text() for p, (_, c) in compiled.items()}
    for p in hlo:
        assert _count(hlo[p], "all-reduce") + _count(hlo[p], "reduce-scatter") > 0, p  # gradients are reduced
    # the plan: whole gradients for zero1, fsdp shards for zero2 / zero3
    grads = {p: _spec2(tr.grad_shardings[KERNEL]) for p, (tr, _) in compiled.items()}
    assert grads == {"zero1": (None, None), "zero2": ("fsdp", None), "zero3": ("fsdp", None)}
    # optimizer state sharded in all three: the updated parameters are gathered back from shards
    assert _count(hlo["zero1"], "all-gather") > 0 and _count(hlo["zero2"], "all-gather") > 0

    def local(tree):
        return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in jax.tree.leaves(tree))

    state = {p: tr.abstract_state() for p, (tr, _) in compiled.items()}
    params = {p: local(s["params"]) for p, s in state.items()}
    opt = {p: local(s["opt_state"]) for p, s in state.items()}
    temp = {p: c.memory_analysis().temp_size_in_bytes for p, (_, c) in compiled.items()}
    assert params["zero1"] == params["zero2"] > 6 * params["zero3"]  # zero3: parameters sharded
    assert 2 * params["zero1"] > 6 * opt["zero1"] and opt["zero1"] == opt["zero2"] == opt["zero3"]
    assert temp["zero2"] < 0.9 * temp["zero1"], temp  # zero2: gradient buffers sharded


def test_estimate_reads_the_plan():
    cfg = ModelConfig(vocab_size=2048, hidden_size=256, intermediate_size=512, num_layers=2, num_heads=4, num_kv_heads=2)
    est = {p: estimate_memory(cfg, "full", seq_len=64, parallel=ParallelConfig(preset=p, data=1, fsdp=8))
           for p in ("dp", "zero1", "zero2", "zero3")}
    # norm scales ([d]) stay replicated, so "divided by 8" is a little less than 8
    assert 7.5 < est["dp"].optimizer / est["zero1"].optimizer <= 8 and est["zero1"].grads == est["dp"].grads
    assert 7.5 < est["dp"].grads / est["zero2"].grads <= 8 and est["zero2"].weights == est["dp"].weights
    assert 7.5 < est["dp"].weights / est["zero3"].weights <= 8


# ----------------------------------------------------------------------------- meshes and rules


def test_hybrid_mesh_keeps_fsdp_inside_a_node():
    mesh = build_mesh(ParallelConfig(preset="hybrid", devices_per_node=4))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1, "sequence": 1}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)[:, :, 0, 0]
    assert ids.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # each fsdp group is one node's devices


def test_indivisible_dimension_is_an_error_unless_a_rule_replicates_it():
    with pytest.raises(ValueError, match="unknown mesh axis"):
        ShardingRules((("embed", "model"),))
    plan = ShardingPlan.build(ParallelConfig(preset="zero3", data=1, fsdp=8))
    assert tuple(plan.spec("params", ("embed", "mlp"), (64, 176))) == ("fsdp", None)
    with pytest.raises(ValueError, match=r"'embed' of size 12 is not divisible by mesh axes \('fsdp',\) \(size 8\)"):
        plan.spec("params", ("embed",), (12,))
    lenient = ShardingRules((("embed", "fsdp"),), replicate_if_indivisible=frozenset({"embed"}))
    assert tuple(lenient.spec(("embed",), (12,), plan.mesh)) == (None,)
    # a whole model: the error names the parameter
    with pytest.raises(ValueError, match=r"embed/embedding \(params, preset zero3\): logical axis 'embed' of size 60"):
        Trainer.create(_cfg("zero3", model={"vocab_size": 512, "hidden_size": 60, "intermediate_size": 128,
                                            "num_layers": 1, "num_heads": 4, "num_kv_heads": 2}, data=1, fsdp=8))
    with pytest.raises(ValueError, match=r"micro-batch .*=4 is not divisible by the batch axes"):
        Trainer.create(_cfg("dp", batch_size=4, data=8))


def test_serving_plan_replicates_heads_tp_does_not_divide():
    plan = ShardingPlan.serving(2)
    assert tuple(plan.spec("params", ("embed", "heads", "head_dim"), (576, 9, 64))) == (None, None, None)
    assert tuple(plan.spec("params", ("embed", "mlp"), (576, 1536))) == (None, "tensor")
    with pytest.raises(ValueError, match="tp=16"):
        ShardingPlan.serving(16)
