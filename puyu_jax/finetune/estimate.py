"""Per-device memory of a finetuning step, analytically (`puyu finetune estimate`).

Bytes per device for one optimizer step at micro-batch b x sequence s (T = b s tokens):

* weights: the frozen / trained base in `param_dtype`; QLoRA stores targeted kernels as NF4
  (0.5 B/param + int8 block scales + fp32 second-level scales, `nf4_bytes_per_param`).
* lora: the LoRA factors (fp32 master weights).
* grads: trainable parameters x 4 (the fp32 gradient accumulator).
* optimizer: AdamW's two moments (parameter dtype) for trainable parameters only.
* activations: saved for the backward pass, per layer, by remat policy (compute dtype a):
    none       T a (6d + 2(h+2k)e + 2he + 8f) + 8 b h s^2   (attention probabilities, fp32;
               none with attention_impl dot_product, i.e. flash attention)
    save_dots  T a (2d + (h+2k)e + he + 3f) per layer + one layer recomputed ("none" once)
    full       T a d per layer (the layer inputs) + one layer recomputed ("none" once)
  plus the logits (T v (4 + a): fp32 for the loss, their gradient in the compute dtype), and
  for QLoRA two dequantized copies of the largest targeted kernel (dequantized per matmul).
Sharding: every array is divided exactly as the run's `ShardingPlan` shards it (zero1:
optimizer state over fsdp; zero2: also the gradient accumulator; zero3: also the weights;
tp: heads / mlp / vocab over tensor; NF4 codes stay replicated, as in the step);
activations are divided by the batch-parallel device count.

The coefficients were checked against XLA's own buffer assignment of the compiled step on
CPU (`measure_step_memory`; within 25% for small models at remat none). XLA:CPU does not
lower remat's memory, so the remat rows are the design target for GPU / TPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from puyu_jax.finetune.lora import (
    LoRAAdapter,
    LoRAConfig,
    cached_logical_axes,
    cached_param_shapes,
    lora_axes,
    lora_shapes,
    target_kernels,
)
from puyu_jax.quant.nf4 import nf4_bytes_per_param
from puyu_jax.models.config import ModelConfig
from puyu_jax.models.params import param_shapes
from puyu_jax.parallel.sharding import ParallelConfig, ShardingPlan
from puyu_jax.train.config import DataConfig, TrainConfig
from puyu_jax.train.step import Trainer

GiB = 1024**3


@dataclass
class MemoryEstimate:
    """Bytes per device, by component."""

    weights: float
    lora: float
    grads: float
    optimizer: float
    activations: float
    params: int  # base parameter count
    trainable: int  # trainable parameter count

    @property
    def total(self) -> float:
        return self.weights + self.lora + self.grads + self.optimizer + self.activations

    def rows(self) -> list[tuple[str, float]]:
        return [("weights", self.weights), ("lora", self.lora), ("grads", self.grads),
                ("optimizer", self.optimizer), ("activations", self.activations), ("total", self.total)]


def _layer_activations(cfg: ModelConfig, b: int, s: int, a: int) -> float:
    d, h, k, e, f = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head, cfg.intermediate_size
    t = b * s
    attention = 0 if cfg.attention_impl == "dot_product" else 8 * b * h * s * s  # flash attention keeps no s^2
    return t * a * (6 * d + 2 * (h + 2 * k) * e + 2 * h * e + 8 * f) + attention


def estimate_memory(cfg: ModelConfig, mode: str, *, seq_len: int, batch: int = 1, lora: LoRAConfig | None = None,
                    remat: str = "none", parallel: ParallelConfig | None = None, devices: int = 0) -> MemoryEstimate:
    """Per-device bytes of a finetuning step (see the module docstring).

    Args:
      cfg: model config (param_dtype / dtype give storage and compute bytes).
      mode: full, lora or qlora.
      seq_len, batch: the micro-batch of the whole step (split over the batch axes).
      lora: LoRA config (rank, targets, NF4 block sizes) for lora / qlora.
      remat: none, save_dots or full.
      parallel: preset and mesh sizes (default: one device); each array is divided exactly as
        the run's `ShardingPlan` shards it (NF4 codes stay replicated, as in the step).
      devices: device count for a `-1` mesh axis (default: the product of the other sizes).
    """
    lora = lora or LoRAConfig()
    parallel = parallel or ParallelConfig(data=1)
    sizes = (parallel.data, parallel.fsdp, parallel.tensor, parallel.sequence)
    if devices:
        n_dev = devices
    elif parallel.preset == "hybrid":
        n_dev = parallel.devices_per_node or 1  # one node
    else:
        n_dev = math.prod(max(s, 1) for s in sizes)
    plan = ShardingPlan.abstract(parallel, n_dev, parallel.devices_per_node or n_dev)
    pb = jnp.dtype(cfg.param_dtype).itemsize
    a = jnp.dtype(cfg.dtype).itemsize
    shapes = cached_param_shapes(cfg)
    axes = cached_logical_axes(cfg)
    n = sum(math.prod(v.shape) for v in shapes.values())

    def local(component: str, names, shape_of, ax) -> int:
        return sum(plan.local_size(component, ax[k], shape_of[k].shape) for k in names)

    if mode == "full":
        t_shapes, t_axes, tb = shapes, axes, pb
        weights = local("params", shapes, shapes, axes) * pb
    else:
        t_shapes, t_axes, tb = lora_shapes(cfg, lora), lora_axes(cfg, lora), 4
        quantized = set(target_kernels(cfg, lora)) if mode == "qlora" else set()
        weights = local("params", [k for k in shapes if k not in quantized], shapes, axes) * pb
        weights += sum(math.prod(shapes[k].shape) for k in quantized) * nf4_bytes_per_param(lora.nf4_block,
                                                                                            lora.nf4_scale_block)
    trainable = sum(math.prod(v.shape) for v in t_shapes.values())
    # the fp32 accumulator (each micro-batch's gradient is fused into it), in the gradient sharding
    grads = local("grads", t_shapes, t_shapes, t_axes) * 4
    optimizer = 2 * local("opt_state", t_shapes, t_shapes, t_axes) * tb
    lora_bytes = local("params", t_shapes, t_shapes, t_axes) * 4 if mode != "full" else 0
    b = max(batch // plan.batch_devices, 1)
    t = b * seq_len
    per_layer = _layer_activations(cfg, b, seq_len, a)
    d = cfg.hidden_size
    saved = {"none": per_layer * cfg.num_layers,
             "save_dots": t * a * (2 * d + (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.dim_per_head
                                   + cfg.num_heads * cfg.dim_per_head + 3 * cfg.intermediate_size) * cfg.num_layers + per_layer,
             "full": t * a * d * cfg.num_layers + per_layer}[remat]
    act = saved + t * cfg.vocab_size * (4 + a)
    if mode == "qlora":
        act += 2 * max(math.prod(shapes[k].shape) for k in target_kernels(cfg, lora)) * a
    return MemoryEstimate(weights, lora_bytes, grads, optimizer, act, n, trainable)


def measure_step_memory(cfg: ModelConfig, mode: str, *, seq_len: int, batch: int = 1, lora: LoRAConfig | None = None,
                        remat: str = "none", device=None) -> dict:
    """XLA's buffer assignment of the compiled train step on one device: arguments (state,
    frozen base, batch) and temporaries, in bytes. Nothing is allocated."""
    lora = lora or LoRAConfig()
    tc = TrainConfig(model=cfg, data=DataConfig(seq_len=seq_len), parallel=ParallelConfig(data=1),
                     batch_size=batch, remat=remat, steps=10)
    adapter = None
    if mode != "full":
        base = {k: jnp.zeros(v.shape, v.dtype) for k, v in param_shapes(cfg).items()}
        adapter = LoRAAdapter(cfg, lora, base, quantized=mode == "qlora")
    tr = Trainer.create(tc, [device or jax.devices()[0]], adapter=adapter)
    batch_spec = {k: jax.ShapeDtypeStruct((1, batch, seq_len), jnp.int32, sharding=tr.batch_sharding)
                  for k in ("tokens", "segment_ids", "positions", "loss_mask")}
    args = (tr.abstract_state(), batch_spec)
    if adapter is not None:
        args += (jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tr.frozen, tr.frozen_shardings),)
    ma = tr.jit_step.lower(*args).compile().memory_analysis()
    return {"arguments": ma.argument_size_in_bytes, "temp": ma.temp_size_in_bytes,
            "total": ma.argument_size_in_bytes + ma.temp_size_in_bytes}


def format_table(rows: dict[str, MemoryEstimate]) -> str:
    """A plain-text table: one column per mode, GiB per component."""
    names = [r for r, _ in next(iter(rows.values())).rows()]
    head = f"{'per device (GiB)':<18}" + "".join(f"{m:>12}" for m in rows)
    lines = [head, "-" * len(head)]
    for i, name in enumerate(names):
        lines.append(f"{name:<18}" + "".join(f"{est.rows()[i][1] / GiB:>12.3f}" for est in rows.values()))
    lines.append(f"{'trainable params':<18}" + "".join(f"{est.trainable / 1e6:>11.1f}M" for est in rows.values()))
    return "\n".join(lines)
