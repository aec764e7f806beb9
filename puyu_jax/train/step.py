"""The pure training step and the sharded train state.

State is a plain dict pytree:
    params:    flat dict name -> array (master weights, model.param_dtype)
    opt_state: optax AdamW state (mirrors params)
    step:      int32 []
    skipped:   int32 [] — updates dropped by the NaN/Inf guard

A batch is a dict of int32 arrays [grad_accum, micro_batch, seq_len]: tokens,
segment_ids (0 = padding; documents never attend across a boundary), positions, and
optionally loss_mask (1 where token t is a training target, e.g. assistant tokens in
SFT; batches without it train on every next token of each document).

With an `adapter` (LoRA / QLoRA, see `puyu_jax.finetune.lora`) `params` holds only the
trainable parameters; the frozen base is a separate, non-donated input of the jit'd
step, and the model is bound from `adapter.bind(graphdef, template, frozen, params, rng)`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from puyu_jax.models.config import ModelConfig
from puyu_jax.models.logprobs import token_logprobs
from puyu_jax.models.params import abstract_model, init_model, logical_axes, param_shapes, to_flat
from puyu_jax.parallel.sharding import ShardingPlan
from puyu_jax.train.config import OptimizerConfig, TrainConfig

REMAT_POLICIES = {
    "none": None,
    "full": True,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def lr_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine / linear decay to lr * min_lr_ratio, or constant."""
    warm = max(cfg.warmup_steps, 0)
    end = cfg.lr * cfg.min_lr_ratio
    decay_steps = max(total_steps - warm, 1)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "linear":
        main = optax.linear_schedule(cfg.lr, end, decay_steps)
    else:
        main = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    if not warm:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), main], [warm])


def decay_mask(params: dict[str, Any]) -> dict[str, bool]:
    """Weight decay on matrices only: never on norm scales or biases."""
    return {k: not (k.endswith("/scale") or k.endswith("/bias")) for k in params}


def make_optimizer(cfg: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(lr_schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                    weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def bind(graphdef, template: nnx.State, flat: dict[str, jax.Array]):
    """The model whose parameters are `flat` (trace-time only under jit)."""
    leaves = [(path, var.replace(flat["/".join(map(str, path))])) for path, var in nnx.to_flat_state(template)]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def token_loss(model, batch: dict[str, jax.Array], z_loss: float, remat) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Summed next-token cross-entropy over a micro-batch.

    The target of position i is token i+1 of the same document; padding and the first
    token of each document are never targets, nor is token t where `batch["loss_mask"]`
    (optional, [b, t]) is 0. Returns (loss_sum, z_sum, n_targets).
    """
    tokens, seg = batch["tokens"], batch["segment_ids"]
    logits, _ = model(tokens, positions=batch["positions"], segment_ids=seg, remat=remat)
    logits = logits[:, :-1]
    targets = tokens[:, 1:]
    valid = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] != 0)
    if "loss_mask" in batch:
        valid &= batch["loss_mask"][:, 1:] != 0
    logprob, lse = token_logprobs(logits, targets)
    nll = -logprob
    w = valid.astype(jnp.float32)
    return jnp.sum(nll * w), jnp.sum(jnp.square(lse) * w), jnp.sum(w)


class Adapter(Protocol):
    """What the Trainer needs from a parameter-efficient finetuning method (e.g. LoRA).

    `frozen` is the frozen base (a pytree of host or device arrays, possibly quantized);
    the trainable parameters are a flat dict name -> array.
    """

    frozen: Any

    def abstract_model(self, cfg: ModelConfig) -> nnx.Module: ...  # the graph `bind` fills

    def trainable_shapes(self) -> dict[str, jax.ShapeDtypeStruct]: ...

    def trainable_axes(self) -> dict[str, tuple[str | None, ...]]: ...

    def frozen_shardings(self, plan: ShardingPlan) -> Any: ...  # pytree like `frozen` (params rules)

    def init(self, seed: int) -> dict[str, jax.Array]: ...  # trainable params (traceable)

    def bind(self, graphdef, template: nnx.State, frozen: Any, trainable: dict, rng: jax.Array | None): ...


@dataclass(frozen=True)
class StepContext:
    """What the pure step closes over (static under jit): config, plan, optimizer, model graph."""

    cfg: TrainConfig
    plan: ShardingPlan
    tx: optax.GradientTransformation
    graphdef: Any
    template: nnx.State
    grad_shardings: dict
    adapter: Adapter | None = None


def train_step(ctx: StepContext, state: dict, batch: dict[str, jax.Array], frozen: Any = None):
    """One optimizer step: `(state, batch[, frozen]) -> (state, metrics)`; pure, jit-able.

    Gradients of the `grad_accum` micro-batches are accumulated in fp32 in the plan's
    gradient sharding (replicated: all-reduced; sharded: reduce-scattered), averaged per
    target token, clipped and applied by AdamW; a non-finite loss or gradient norm
    leaves params and optimizer state unchanged and counts a skip.
    """
    cfg, adapter = ctx.cfg, ctx.adapter
    remat = REMAT_POLICIES[cfg.remat]
    schedule = lr_schedule(cfg.optimizer, cfg.steps)

    def micro(params, mb, rng):
        with ctx.plan.activations():
            if adapter is None:
                model = bind(ctx.graphdef, ctx.template, params)
            else:
                model = adapter.bind(ctx.graphdef, ctx.template, frozen, params, rng)
            loss_sum, z_sum, n = token_loss(model, mb, cfg.z_loss, remat)
        return loss_sum + cfg.z_loss * z_sum, (loss_sum, n)

    grad_fn = jax.grad(micro, has_aux=True)
    params = state["params"]
    rng = jax.random.fold_in(jax.random.key(cfg.seed), state["step"])

    def body(carry, xs):
        mb, i = xs
        g_acc, loss_acc, n_acc = carry
        g, (loss_sum, n) = grad_fn(params, mb, jax.random.fold_in(rng, i))
        g = jax.lax.with_sharding_constraint(g, ctx.grad_shardings)
        g_acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), g_acc, g)
        return (g_acc, loss_acc + loss_sum, n_acc + n), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    zeros = jax.lax.with_sharding_constraint(zeros, ctx.grad_shardings)
    micro_ids = jnp.arange(batch["tokens"].shape[0])
    (grads, loss_sum, n), _ = jax.lax.scan(body, (zeros, jnp.float32(0), jnp.float32(0)), (batch, micro_ids))
    n = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / n, grads)
    loss = loss_sum / n
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt = ctx.tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    # NaN/Inf guard: keep the old params and optimizer state, count the skip.
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    new_state = {
        "params": keep(new_params, params),
        "opt_state": keep(new_opt, state["opt_state"]),
        "step": state["step"] + 1,
        "skipped": state["skipped"] + (~finite).astype(jnp.int32),
    }
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
               "tokens": n, "finite": finite}
    return new_state, metrics


@dataclass
class Trainer:
    """Holds what the pure step closes over: the sharding plan, graphdef, optimizer.

    With an adapter, `state["params"]` holds only the trainable parameters (so do the
    optimizer state and checkpoints) and `frozen` the sharded frozen base.
    """

    cfg: TrainConfig
    plan: ShardingPlan
    tx: optax.GradientTransformation
    graphdef: Any
    template: nnx.State
    param_shardings: dict
    grad_shardings: dict
    state_shardings: dict
    batch_sharding: jax.sharding.NamedSharding
    adapter: Adapter | None = None
    frozen_shardings: Any = None
    frozen: Any = None  # the adapter's frozen base, placed in frozen_shardings

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self.plan.mesh

    @classmethod
    def create(cls, cfg: TrainConfig, devices: list | None = None, adapter: Adapter | None = None) -> "Trainer":
        """A Trainer for `cfg`; with `adapter`, only the adapter's parameters are trained."""
        plan = ShardingPlan.build(cfg.parallel, devices)
        plan.check_batch(cfg.batch_size // cfg.grad_accum,
                         f"micro-batch (batch_size={cfg.batch_size} / grad_accum={cfg.grad_accum})")
        if adapter is None:
            axes = logical_axes(cfg.model)
            dtypes = {k: (v.shape, jnp.dtype(cfg.model.param_dtype)) for k, v in param_shapes(cfg.model).items()}
            graphdef, template = nnx.split(abstract_model(cfg.model), nnx.Param)
        else:
            axes = adapter.trainable_axes()
            dtypes = {k: (v.shape, v.dtype) for k, v in adapter.trainable_shapes().items()}
            graphdef, template = nnx.split(adapter.abstract_model(cfg.model), nnx.Param)
        shapes = {k: s for k, (s, _) in dtypes.items()}
        p_shard = plan.shardings("params", axes, shapes)
        g_shard = plan.shardings("grads", axes, shapes)
        o_shard = plan.shardings("opt_state", axes, shapes)
        tx = make_optimizer(cfg.optimizer, cfg.steps)
        abstract_params = {k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in dtypes.items()}
        abstract_opt = jax.eval_shape(tx.init, abstract_params)
        opt_shard = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, o_shard,
                                          transform_non_params=lambda _: plan.replicated)
        state_shardings = {"params": p_shard, "opt_state": opt_shard, "step": plan.replicated,
                           "skipped": plan.replicated}
        bsh = plan.batch_sharding(ndim=3, leading=1)  # [grad_accum, micro_batch, seq]
        trainer = cls(cfg, plan, tx, graphdef, template, p_shard, g_shard, state_shardings, bsh)
        if adapter is not None:
            trainer.adapter = adapter
            trainer.frozen_shardings = adapter.frozen_shardings(plan)
            trainer.frozen = jax.device_put(adapter.frozen, trainer.frozen_shardings)
        return trainer

    # -- state -------------------------------------------------------------------------------

    def _abstract_params(self) -> dict[str, jax.ShapeDtypeStruct]:
        if self.adapter is not None:
            return self.adapter.trainable_shapes()
        return {k: jax.ShapeDtypeStruct(v.shape, jnp.dtype(self.cfg.model.param_dtype))
                for k, v in param_shapes(self.cfg.model).items()}

    def init_state(self, seed: int | None = None, params: dict | None = None) -> dict:
        """Fresh, sharded train state: each array is created directly in its sharding.

        `params` (e.g. pretrained weights for full finetuning) replaces the random init.
        """
        seed = self.cfg.seed if seed is None else seed

        want = self._abstract_params()

        def fresh(params):
            if params is None:
                params = self.adapter.init(seed) if self.adapter is not None else to_flat(init_model(self.cfg.model, seed))
            params = {k: v.astype(want[k].dtype) for k, v in params.items()}
            return {"params": params, "opt_state": self.tx.init(params),
                    "step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

        if params is None:
            return jax.jit(lambda: fresh(None), out_shardings=self.state_shardings)()
        params = {k: jax.device_put(params[k], self.param_shardings[k]) for k in want}
        return jax.jit(fresh, out_shardings=self.state_shardings)(params)

    def abstract_state(self) -> dict:
        """ShapeDtypeStructs (with shardings) of the state: the restore target for orbax."""
        def shapes():
            params = {k: jnp.zeros(v.shape, v.dtype) for k, v in self._abstract_params().items()}
            return {"params": params, "opt_state": self.tx.init(params),
                    "step": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                            jax.eval_shape(shapes), self.state_shardings)

    # -- step --------------------------------------------------------------------------------

    @functools.cached_property
    def step_fn(self):
        """jit'd `(state, batch) -> (state, metrics)` with explicit in/out shardings, state donated.

        With an adapter the frozen base `self.frozen` is passed as a third, non-donated argument.
        """
        jitted = self.jit_step
        if self.adapter is None:
            return jitted
        return lambda state, batch: jitted(state, batch, self.frozen)

    @functools.cached_property
    def jit_step(self):
        """`train_step` jit'd: `(state, batch)`, or `(state, batch, frozen)` with an adapter."""
        ctx = StepContext(self.cfg, self.plan, self.tx, self.graphdef, self.template, self.grad_shardings,
                          self.adapter)
        in_shardings = (self.state_shardings, self.batch_sharding)
        if self.adapter is not None:
            in_shardings += (self.frozen_shardings,)
        return jax.jit(functools.partial(train_step, ctx), in_shardings=in_shardings,
                       out_shardings=(self.state_shardings, None), donate_argnums=(0,))

    def shard_batch(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
        """[batch, seq] host arrays -> [grad_accum, micro, seq] global arrays on the mesh
        (tokens, segment_ids, positions and, when present, loss_mask)."""
        a = self.cfg.grad_accum
        out = {}
        for k in batch_keys(batch):
            x = jnp.asarray(batch[k], jnp.int32)
            out[k] = jax.device_put(x.reshape(a, x.shape[0] // a, *x.shape[1:]), self.batch_sharding)
        return out


def batch_keys(batch: dict) -> tuple[str, ...]:
    """The batch fields the step reads: loss_mask is optional."""
    return ("tokens", "segment_ids", "positions") + (("loss_mask",) if "loss_mask" in batch else ())


def model_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (non-embedding params + output head) plus causal attention.

    Dense matmuls: 6N (forward 2N, backward 4N). Attention scores and values:
    forward 4 * L * H * Dh * T per token, halved by the causal mask, times 3 for
    forward + backward -> 6 * L * H * Dh * T.
    """
    shapes = param_shapes(cfg)
    n = sum(int(jnp.prod(jnp.array(s.shape))) for k, s in shapes.items() if k != "embed/embedding")
    if cfg.tie_word_embeddings:
        n += cfg.vocab_size * cfg.hidden_size  # the tied head still does a matmul
    attn = 6 * cfg.num_layers * cfg.num_heads * cfg.dim_per_head * seq_len
    return 6.0 * n + attn

