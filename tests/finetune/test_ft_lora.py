"""LoRA / QLoRA on the shared Trainer: only LoRA params train; the base stays frozen."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.config import load_config
from puyu_jax.finetune.lora import (
    LoRAAdapter, LoRAConfig, init_lora, lora_model, lora_transformer, merge_lora, quantize_base, target_kernels,
)
from puyu_jax.quant.nf4 import NF4Tensor
from puyu_jax.models import from_flat, init_model, to_flat
from puyu_jax.train.config import TrainConfig
from puyu_jax.train.step import Trainer

LC = LoRAConfig(rank=4, alpha=8.0)


def _cfg(**over):
    base = {"model": "tiny", "batch_size": 4, "data": {"seq_len": 32}, "steps": 10, "parallel": {"data": 1},
            "optimizer": {"lr": 1e-2, "warmup_steps": 0, "schedule": "constant", "weight_decay": 0.0}}
    return load_config(TrainConfig, base, [f"{k}={v}" for k, v in over.items()])


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.tile(rng.integers(3, 512, (1, 32)), (4, 1))
    mask = np.zeros((4, 32), np.int32)
    mask[:, 16:] = 1
    return {"tokens": tokens, "segment_ids": np.ones((4, 32), np.int32),
            "positions": np.tile(np.arange(32), (4, 1)), "loss_mask": mask}


def test_targets_regex_and_nnx_lora_params():
    cfg = _cfg().model
    assert len(target_kernels(cfg, LC)) == 14 and target_kernels(cfg, dataclasses.replace(LC, targets=r".*q_proj/kernel")) == [
        "layers/0/attn/q_proj/kernel", "layers/1/attn/q_proj/kernel"]
    _, lora_state, rest = nnx.split(lora_transformer(cfg, LC), nnx.LoRAParam, nnx.Param)
    names = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(lora_state)}
    assert names == set(init_lora(cfg, LC)) and "layers/0/attn/o_proj/lora_a" in names
    assert init_lora(cfg, LC)["layers/0/attn/o_proj/lora_a"].shape == (4, 16, 4)  # [h, e, r]


def test_lora_forward_equals_merged_weights_and_qlora_dequantizes():
    cfg = _cfg().model
    base = to_flat(init_model(cfg, 0))
    tr = {k: v + 0.05 * jax.random.normal(jax.random.key(i), v.shape) for i, (k, v) in enumerate(sorted(init_lora(cfg, LC, 1).items()))}
    toks = jnp.arange(24)[None] % 500
    lora_fwd = jax.jit(lambda b, t: lora_model(cfg, LC, b, t)(toks)[0])
    merged_fwd = jax.jit(lambda b, t: from_flat(cfg, merge_lora(b, t, LC))(toks)[0])
    np.testing.assert_allclose(lora_fwd(base, tr), merged_fwd(base, tr), atol=1e-5)
    qbase = quantize_base(cfg, LC, base)
    assert isinstance(qbase["layers/0/mlp/up_proj/kernel"], NF4Tensor) and not isinstance(qbase["embed/embedding"], NF4Tensor)
    np.testing.assert_allclose(lora_fwd(qbase, tr), merged_fwd(qbase, tr), atol=1e-5)


def _train(adapter, n=6, **over):
    tr = Trainer.create(_cfg(**over), jax.devices()[:1], adapter=adapter)
    state = tr.init_state()
    losses = []
    for i in range(n):
        state, m = tr.step_fn(state, tr.shard_batch(_batch()))
        losses.append(float(m["loss"]))
    return tr, state, losses


def test_lora_trainer_trains_only_lora_and_keeps_base_frozen():
    cfg = _cfg().model
    base = {k: np.asarray(v) for k, v in to_flat(init_model(cfg, 0)).items()}
    adapter = LoRAAdapter(cfg, dataclasses.replace(LC, dropout=0.1), base)
    tr, state, losses = _train(adapter, grad_accum=2)
    assert set(state["params"]) == set(init_lora(cfg, LC)) and losses[-1] < losses[0] - 0.3
    for k, v in base.items():
        np.testing.assert_array_equal(np.asarray(tr.frozen[k]), v)
    opt_leaves = jax.tree.leaves(state["opt_state"])
    assert sum(x.size for x in opt_leaves) <= 2 * sum(v.size for v in state["params"].values()) + 8


def test_qlora_trainer_learns_on_an_nf4_base():
    cfg = _cfg().model
    adapter = LoRAAdapter(cfg, LC, to_flat(init_model(cfg, 0)), quantized=True)
    tr, state, losses = _train(adapter)
    assert isinstance(tr.frozen["layers/1/attn/q_proj/kernel"], NF4Tensor) and losses[-1] < losses[0] - 0.3


def test_full_finetune_starts_from_given_params():
    cfg = _cfg()
    params = to_flat(init_model(cfg.model, 7))
    tr = Trainer.create(cfg, jax.devices()[:1])
    state = tr.init_state(params=params)
    np.testing.assert_array_equal(np.asarray(state["params"]["embed/embedding"]), np.asarray(params["embed/embedding"]))


def test_qlora_with_dropout_under_scan_layers_matches_the_unrolled_model():
    """Per-module dropout keys live in the model's state, so a scanned QLoRA model (one layer
    body for every layer) draws the same masks and gives the same loss and gradients."""
    from puyu_jax.train.step import REMAT_POLICIES, token_loss

    cfg = _cfg(**{"model.num_layers": 3}).model
    lc = dataclasses.replace(LC, dropout=0.3)
    base = to_flat(init_model(cfg, 0))
    batch = {k: jnp.asarray(v) for k, v in _batch().items()}
    out = {}
    for scan in (False, True):
        c = cfg.replace(scan_layers=scan)
        adapter = LoRAAdapter(c, lc, base, quantized=True)
        graphdef, template = nnx.split(adapter.abstract_model(c), nnx.Param)
        trainable = {k: v + 0.01 * (i + 1) for i, (k, v) in enumerate(sorted(adapter.init(0).items()))}

        def loss(p):
            model = adapter.bind(graphdef, template, adapter.frozen, p, jax.random.key(3))
            s, _, n = token_loss(model, batch, 0.0, REMAT_POLICIES["none"])
            return s / n

        out[scan] = jax.jit(jax.value_and_grad(loss))(trainable)
    (lu, gu), (ls, gs) = out[False], out[True]
    np.testing.assert_allclose(ls, lu, rtol=1e-6)
    for k in gu:
        np.testing.assert_allclose(gs[k], gu[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # dropout is on: another key draws other masks, so another loss
    adapter = LoRAAdapter(cfg, lc, base, quantized=True)
    graphdef, template = nnx.split(adapter.abstract_model(cfg), nnx.Param)
    trainable = {k: v + 0.01 * (i + 1) for i, (k, v) in enumerate(sorted(adapter.init(0).items()))}
    s, _, n = token_loss(adapter.bind(graphdef, template, adapter.frozen, trainable, jax.random.key(4)), batch, 0.0,
                         REMAT_POLICIES["none"])
    assert abs(float(s / n) - float(lu)) > 1e-4
