"""Ahead-of-time compilation of the real steps for a TPU topology, on any host.

`jax.experimental.topologies.get_topology_desc` (with libtpu installed) describes the chips of
a TPU slice without owning any; a mesh over those device descriptions, abstract inputs
(`jax.ShapeDtypeStruct` with `NamedSharding`s, parameters from `nnx.eval_shape`) and
`jit(f).lower(...).compile()` run the real TPU compiler (XLA and Mosaic for the Pallas
kernels). No weight is allocated. What is compiled is the code that runs:

* train: `Trainer.jit_step` (puyu_jax/train/step.py) with its state and batch shardings;
* finetune: the same step with the LoRA / QLoRA adapter's frozen base as a third input;
* serve: the runner's `_step` (puyu_jax/serve/runner.py), one decode token per row, with the
  Pallas paged-attention and int4 kernels selected by `compile_target("tpu")`.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from puyu_jax.aot.chips import Chip, chip_for
from puyu_jax.config import ConfigError

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# `%name = TYPE opcode(`: TYPE is one token or a parenthesized tuple (no "=" inside).
_INSTRUCTION_RE = re.compile(r"^\s+(?:ROOT\s+)?%\S+\s*=\s*(?:\(.*?\)|\S+)\s+([a-z][a-z0-9\-]*)\(")


def quiet_libtpu_env() -> None:
    """Dummy TPU host variables (without them libtpu logs start-up errors on a non-TPU host), and
    no libtpu lockfile: compiling needs no chip, so several processes (pytest workers) may load it."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def tpu_devices(topology: str) -> list:
    """Device descriptions of a TPU slice, e.g. "v5e:2x4", "v5p:4x4x4", "v4:2x2x2", "v6e:2x2"."""
    quiet_libtpu_env()
    try:
        from jax.experimental import topologies

        return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
    except Exception as e:  # libtpu missing, or a name it does not know
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--topology {topology!r}: {first} (needs libtpu: pip install -e '.[tpu]'; "
                          "names look like v5e:2x4, v5p:4x4x4, v4:2x2x2, v6e:2x2)") from e


# ----------------------------------------------------------------------------- results


@dataclass
class Program:
    """One compiled step and what is needed to judge it."""

    kind: str  # train / finetune / serve-decode
    compiled: Any  # jax.stages.Compiled
    devices: list
    model_flops: float  # useful FLOPs of one step over all devices (6N convention for training)
    tokens: int  # tokens one step processes (trained, or decoded)
    lower_s: float
    compile_s: float
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    """Per-device figures of a compiled step and its roofline."""

    kind: str
    chip: str
    devices: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: float
    flops: float  # per device, from XLA's cost analysis
    bytes_accessed: float  # per device
    collectives: dict[str, int]
    peak_flops: float  # per device
    hbm_bandwidth: float  # per device
    model_flops: float
    tokens: int
    lower_s: float
    compile_s: float
    notes: list[str]

    @property
    def total_bytes(self) -> int:
        """Live bytes per device: arguments + outputs not aliased to donated arguments + temporaries + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    @property
    def compute_s(self) -> float:
        return self.flops / self.peak_flops

    @property
    def memory_s(self) -> float:
        return self.bytes_accessed / self.hbm_bandwidth

    @property
    def step_s(self) -> float:
        """Roofline bound: the slower of compute at peak and HBM traffic at full bandwidth."""
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "memory"

    @property
    def mfu(self) -> float:
        """Model FLOPs utilization if the step ran at the roofline bound."""
        return self.model_flops / (self.devices * self.peak_flops * self.step_s) if self.step_s else float("nan")

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.step_s if self.step_s else float("nan")

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        out.update(total_bytes=self.total_bytes, fits=self.fits, step_s=self.step_s, bound=self.bound,
                   mfu=self.mfu, tokens_per_s=self.tokens_per_s, compute_s=self.compute_s, memory_s=self.memory_s)
        return out


def count_collectives(hlo_text: str) -> dict[str, int]:
    """Collective ops in compiled HLO text, by kind.

    Async pairs count once (the `-start` half); TPU fuses some collectives into fusions whose
    called computation names the collective (`all-reduce-scatter` is a reduce-scatter).
    """
    counts = {c: 0 for c in COLLECTIVES}
    inside_fused_collective = False
    for line in hlo_text.splitlines():
        if line and not line[0].isspace():  # a computation header; a fused collective's body is skipped
            inside_fused_collective = line.lstrip("%").startswith(COLLECTIVES)
            continue
        m = _INSTRUCTION_RE.search(line)
        if inside_fused_collective:
            continue
        if not m:
            continue
        op = m.group(1)
        op = op[: -len("-start")] if op.endswith("-start") else op
        if op == "fusion" and (called := re.search(r"calls=%([a-z\-]+)", line)):
            op = called.group(1).rstrip("-")
            op = "reduce-scatter" if op.startswith("all-reduce-scatter") else op
        if op in counts:
            counts[op] += 1
    return {k: v for k, v in counts.items() if v}


def _cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


def devices_per_chip(devices: list) -> int:
    """JAX devices per physical chip (2 for v4 cores exposed one by one, else 1)."""
    chips = {tuple(getattr(d, "coords", (d.id,))) for d in devices}
    return max(1, len(devices) // max(len(chips), 1))


def analyze(program: Program, chip: Chip | None = None) -> Report:
    """Memory, cost and collectives of a compiled program, against its chip's specs."""
    chip = chip or chip_for(program.devices[0].device_kind)
    share = devices_per_chip(program.devices)
    mem = program.compiled.memory_analysis()
    cost = _cost(program.compiled)
    notes = list(program.notes)
    hlo = program.compiled.as_text()
    loops = loop_cost(hlo)
    if loops.loops:
        # XLA's cost analysis counts a while body once (the layer scan, the grad-accumulation loop):
        # scale its totals by what the loops' trip counts add in the compiled HLO.
        notes.append(f"while loops with trips {loops.loops}: FLOPs = XLA cost analysis x {loops.flops_factor:.2f}, "
                     f"bytes x {loops.bytes_factor:.2f} (the loop bodies counted as often as they run)")
    if loops.unknown_loops:
        notes.append(f"{loops.unknown_loops} while loop(s) without a readable trip count are counted once")
    if loops.error:
        notes.append(f"while loops counted once (XLA's figures): their bodies could not be re-analysed ({loops.error})")
    return Report(
        kind=program.kind, chip=chip.name, devices=len(program.devices),
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), hbm_bytes=chip.hbm_bytes / share,
        flops=loops.flops_factor * float(cost.get("flops", 0.0)),
        bytes_accessed=loops.bytes_factor * float(cost.get("bytes accessed", 0.0)),
        collectives=count_collectives(hlo),
        peak_flops=chip.peak_bf16_flops / share, hbm_bandwidth=chip.hbm_bandwidth / share,
        model_flops=program.model_flops, tokens=program.tokens, lower_s=program.lower_s,
        compile_s=program.compile_s, notes=notes,
    )


def _lower_compile(fn, *args, **kwargs):
    t0 = time.perf_counter()
    lowered = fn.lower(*args, **kwargs)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    return compiled, t1 - t0, time.perf_counter() - t1


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ----------------------------------------------------------------------------- train / finetune


def _replication_notes(axes: dict, shapes: dict, rules, mesh, prefix: str) -> list[str]:
    """Arrays a rule asks to shard that stay replicated because a dimension does not divide."""
    out = []
    for name, logical in axes.items():
        shape = shapes[name]
        for ax, dim in zip(logical, shape):
            wanted = rules.mesh_axes(ax)
            wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted or ())
            mesh_axes = [a for a in wanted if mesh.shape[a] > 1]
            size = math.prod(mesh.shape[a] for a in mesh_axes)
            if mesh_axes and dim % size:
                out.append(f"{prefix}{name}: {ax}={dim} does not divide over {'x'.join(mesh_axes)}={size}, stays replicated")
    return out


def _trainer(cfg, devices, adapter=None):
    from puyu_jax.train.step import Trainer

    try:
        return Trainer.create(cfg, devices, adapter=adapter)
    except ValueError as e:
        raise ConfigError(f"parallel.*: {e} ({len(devices)} devices in the topology)") from e


def _check_batch(cfg, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = cfg.batch_size // cfg.grad_accum
    if micro % shards:
        raise ConfigError(f"batch_size={cfg.batch_size} / grad_accum={cfg.grad_accum} = {micro} sequences per "
                          f"micro-batch do not divide over data x fsdp = {shards} devices: change batch_size or "
                          "grad_accum (or parallel.*)")


def _batch(cfg, sharding, loss_mask: bool) -> dict:
    shape = (cfg.grad_accum, cfg.batch_size // cfg.grad_accum, cfg.data.seq_len)
    keys = ("tokens", "segment_ids", "positions") + (("loss_mask",) if loss_mask else ())
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding) for k in keys}


def train_program(cfg, devices: list) -> Program:
    """Compiles `Trainer.jit_step` of a TrainConfig for `devices` (abstract state and batch)."""
    from puyu_jax.models.params import logical_axes, param_shapes
    from puyu_jax.parallel.sharding import preset_rules
    from puyu_jax.train.step import model_flops_per_token

    trainer = _trainer(cfg, devices)
    _check_batch(cfg, trainer.mesh)
    state = trainer.abstract_state()
    batch = _batch(cfg, trainer.batch_sharding, loss_mask=False)
    compiled, lower_s, compile_s = _lower_compile(trainer.jit_step, state, batch)
    tokens = cfg.batch_size * cfg.data.seq_len
    shapes = {k: v.shape for k, v in param_shapes(cfg.model).items()}
    notes = _replication_notes(logical_axes(cfg.model), shapes, preset_rules(cfg.parallel.preset)["params"], trainer.mesh, "")
    notes.insert(0, f"mesh {dict(trainer.mesh.shape)}")
    return Program("train", compiled, devices, model_flops_per_token(cfg.model, cfg.data.seq_len) * tokens, tokens,
                   lower_s, compile_s, notes)


class AbstractLoRAAdapter:
    """A `LoRAAdapter` whose frozen base is ShapeDtypeStructs (nothing loaded or quantized)."""

    def __new__(cls, model_cfg, lora, quantized: bool):
        from puyu_jax.finetune.lora import LoRAAdapter, cached_param_shapes, quantize_base

        adapter = LoRAAdapter.__new__(LoRAAdapter)
        adapter.cfg, adapter.lora, adapter.quantized, adapter.dtype = model_cfg, lora, quantized, jnp.dtype(jnp.float32)
        pd = jnp.dtype(model_cfg.param_dtype)
        base = {k: jax.ShapeDtypeStruct(v.shape, pd) for k, v in cached_param_shapes(model_cfg).items()}
        adapter.frozen = jax.eval_shape(lambda b: quantize_base(model_cfg, lora, b), base) if quantized else base
        return adapter


def finetune_program(cfg, devices: list, *, scan_layers: bool = False) -> Program:
    """Compiles the finetuning step (full, LoRA or QLoRA) of a FinetuneConfig for `devices`.

    `scan_layers` runs the model's layers as one `lax.scan` (`ModelConfig.scan_layers`; a
    FinetuneConfig names a pretrained model and has no key for it)."""
    from puyu_jax.finetune.run import train_config
    from puyu_jax.pretrained import _with_dtypes, load_model_config
    from puyu_jax.train.step import model_flops_per_token

    model_cfg = _with_dtypes(load_model_config(cfg.model), cfg.dtype or None, cfg.param_dtype or None)
    if cfg.attention_impl:
        model_cfg = model_cfg.replace(attention_impl=cfg.attention_impl)
    if scan_layers:
        model_cfg = model_cfg.replace(scan_layers=True)
    tcfg = train_config(cfg, model_cfg)
    tokens = tcfg.batch_size * tcfg.data.seq_len
    flops = model_flops_per_token(model_cfg, tcfg.data.seq_len) * tokens
    if cfg.mode == "full":
        program = train_program(tcfg, devices)
        program.kind = "finetune"
        return program
    adapter = AbstractLoRAAdapter(model_cfg, cfg.lora, quantized=cfg.mode == "qlora")
    frozen = adapter.frozen
    adapter.frozen = {}  # Trainer.create places the frozen base on devices; the abstract one goes in below
    trainer = _trainer(tcfg, devices, adapter)
    adapter.frozen = frozen
    trainer.frozen_shardings = adapter.frozen_shardings(trainer.plan)
    _check_batch(tcfg, trainer.mesh)
    state = trainer.abstract_state()
    batch = _batch(tcfg, trainer.batch_sharding, loss_mask=True)
    compiled, lower_s, compile_s = _lower_compile(trainer.jit_step, state, batch,
                                                  _abstract(frozen, trainer.frozen_shardings))
    notes = [f"mesh {dict(trainer.mesh.shape)}", f"{cfg.mode}: rank {cfg.lora.rank}; MFU uses the 6N convention "
             "(a frozen base computes no weight gradients, so 4N of it is work)"]
    return Program("finetune", compiled, devices, flops, tokens, lower_s, compile_s, notes)


# ----------------------------------------------------------------------------- serve


def serve_decode_program(cfg, devices: list, *, batch: int = 0, context: int = 0, param_dtype: str = "") -> Program:
    """Compiles the serving runner's `_step` for one decode token per row on `devices`.

    Rows: `batch` or engine.max_num_seqs (rounded up to the runner's power-of-two bucket);
    each row's block table covers `context` tokens (default engine.max_model_len or the
    model's max_position_embeddings); the pool holds engine.num_blocks or what
    engine.kv_cache_memory_gb buys. Kernels are the TPU ones (Pallas Mosaic).
    """
    from flax import nnx

    from puyu_jax.kernels.target import compile_target
    from puyu_jax.models.transformer import Transformer
    from puyu_jax.parallel.sharding import ShardingPlan
    from puyu_jax.pretrained import _with_dtypes, load_model_config
    from puyu_jax.serve.kv_cache import init_paged_cache, kv_bytes_per_block
    from puyu_jax.serve.runner import _step, bucket, tp_pool_sharding, tp_state_shardings
    from puyu_jax.serve.sampling import SamplingArrays, SamplingFlags

    eng = cfg.engine
    model_cfg = _with_dtypes(load_model_config(cfg.model), eng.dtype, param_dtype or None)
    if eng.tp > len(devices):
        raise ConfigError(f"engine.tp={eng.tp} but the topology has {len(devices)} devices")
    if eng.tp > 1 and model_cfg.num_kv_heads % eng.tp:
        raise ConfigError(f"engine.tp={eng.tp} does not divide the model's {model_cfg.num_kv_heads} kv heads: "
                          "the KV pool and attention stay replicated; pick engine.tp dividing num_kv_heads")
    devices = devices[: eng.tp]
    bs = eng.block_size
    num_blocks = max(eng.num_blocks or int(eng.kv_cache_memory_gb * 2**30 // kv_bytes_per_block(model_cfg, bs, eng.kv_dtype)), 2)
    context = context or eng.max_model_len or model_cfg.max_position_embeddings
    b = bucket(batch or eng.max_num_seqs)
    nb = min(bucket(-(-context // bs), 4), num_blocks)

    def build():
        model = Transformer(model_cfg, rngs=nnx.Rngs(0))
        if eng.quant == "int4":
            from puyu_jax.quant import quantize_model

            model = quantize_model(model, method="rtn")  # AWQ gives the same shapes
        return model

    graphdef, state = nnx.split(nnx.eval_shape(build))
    kv = jax.eval_shape(lambda: init_paged_cache(model_cfg, num_blocks, bs, eng.kv_dtype))
    if eng.tp > 1:
        plan = ShardingPlan.serving(eng.tp, devices)
        mesh = plan.mesh
        state = _abstract(state, tp_state_shardings(state, plan))
        kv = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=tp_pool_sharding(model_cfg, plan, x.ndim)), kv)
        rep = NamedSharding(mesh, P())
    else:
        mesh = None
        rep = jax.sharding.SingleDeviceSharding(devices[0])
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
        kv = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), kv)

    def arr(shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=rep)

    f32 = jnp.float32
    sampling = SamplingArrays(
        temperature=arr((b,), f32), top_k=arr((b,)), top_p=arr((b,), f32), min_p=arr((b,), f32),
        repetition_penalty=arr((b,), f32), presence_penalty=arr((b,), f32), frequency_penalty=arr((b,), f32),
        key_data=arr((b, 2), jnp.uint32), step=arr((b,)), history=arr((b, 1)), history_is_output=arr((b, 1), jnp.bool_))
    with compile_target("tpu"):
        compiled, lower_s, compile_s = _lower_compile(
            _step, graphdef, state, kv, arr((b, 1)), arr((b, 1)), arr((b, 1)), arr((b, nb)), arr((b,)), arr((b,)),
            sampling, flags=SamplingFlags(), window=model_cfg.sliding_window or 0, impl=eng.attention_impl, mesh=mesh)
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.split(nnx.eval_shape(lambda: Transformer(
        model_cfg, rngs=nnx.Rngs(0))), nnx.Param)[1]))
    attn = 4 * model_cfg.num_layers * model_cfg.num_heads * model_cfg.dim_per_head * context
    notes = [f"decode: {b} rows x {nb} blocks of {bs} tokens (context {nb * bs}), pool {num_blocks} blocks, "
             f"kv {eng.kv_dtype}, weights {eng.quant}, tp {eng.tp}, params {model_cfg.param_dtype}"]
    return Program("serve-decode", compiled, devices, (2.0 * n_params + attn) * b, b, lower_s, compile_s, notes)


# ----------------------------------------------------------------------------- while loops

_CALLED_RE = re.compile(r"\b(calls|body|condition|to_apply)=%([\w.\-]+)")
_STACK_FRAME_RE = re.compile(r"\s*stack_frame_id=\d+")


@dataclass
class _Instr:
    name: str
    op: str
    operands: list[str]
    args: str  # the text inside the parentheses (a constant's value)
    attrs: str


def _close(text: str, start: int) -> int:
    """Index just past the parenthesis group opening at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def _computations(hlo_text: str) -> tuple[dict[str, str], dict[str, list[_Instr]], str]:
    """HLO module text split into computations: name -> its text, name -> its instructions, the entry."""
    texts: dict[str, list[str]] = {}
    instrs: dict[str, list[_Instr]] = {}
    entry, current = "", None
    for line in hlo_text.splitlines():
        if current is None:
            if line.rstrip().endswith("{") and line[:1] not in ("", " ") and not line.startswith("HloModule"):
                head = line.split()
                current = (head[1] if head[0] == "ENTRY" else head[0]).lstrip("%")
                entry = current if head[0] == "ENTRY" else entry
                texts[current], instrs[current] = [line], []
            continue
        texts[current].append(line)
        if line.startswith("}"):
            current = None
            continue
        text = line.strip()
        text = text[len("ROOT "):] if text.startswith("ROOT ") else text
        if not text.startswith("%") or " = " not in text:
            continue
        name, rest = text[1:].split(" = ", 1)
        end = _close(rest, 0) if rest.startswith("(") else rest.find(" ")  # the result type
        rest = rest[end:].lstrip()
        paren = rest.find("(")
        if paren <= 0:
            continue
        close = _close(rest, paren)
        instrs[current].append(_Instr(name, rest[:paren], re.findall(r"%([\w.\-]+)", rest[paren:close]),
                                      rest[paren + 1:close - 1], rest[close:]))
    return {k: "\n".join(v) for k, v in texts.items()}, instrs, entry


def _trip_count(ins: _Instr, instrs: dict[str, list[_Instr]], defs: dict[str, _Instr]) -> int:
    """Trips of a counted while loop (`i < N`, i from a constant start by a constant step, as lax.scan
    and fori_loop compile, also when the compiler unrolls the body); 0 when the loop is not that shape."""
    called = dict(_CALLED_RE.findall(ins.attrs))
    cond, body = instrs.get(called.get("condition", ""), []), instrs.get(called.get("body", ""), [])

    def const(name: str) -> int | None:
        d = defs.get(name)
        while d is not None and d.op == "copy" and d.operands:
            d = defs.get(d.operands[0])
        m = re.fullmatch(r"\s*(-?\d+)\s*", d.args) if d is not None and d.op == "constant" else None
        return int(m.group(1)) if m else None

    def tuple_index(name: str) -> int | None:
        d = defs.get(name)
        m = re.search(r"index=(\d+)", d.attrs) if d is not None and d.op == "get-tuple-element" else None
        return int(m.group(1)) if m else None

    for c in cond:
        if c.op != "compare" or "direction=LT" not in c.attrs or len(c.operands) != 2:
            continue
        bound, j = const(c.operands[1]), tuple_index(c.operands[0])
        if bound is None or j is None:
            continue
        start, step = 0, 1
        init = defs.get(ins.operands[0]) if ins.operands else None
        if init is not None and init.op == "tuple" and j < len(init.operands):
            start = const(init.operands[j]) or 0
        roots = [b for b in body if b.op == "tuple"]
        if roots and j < len(roots[-1].operands):
            nxt = defs.get(roots[-1].operands[j])
            if nxt is not None and nxt.op == "add":
                steps = [v for v in map(const, nxt.operands) if v is not None]
                step = steps[0] if len(steps) == 1 and steps[0] > 0 else 1
        return max(0, -(-(bound - start) // step))
    return 0


@dataclass
class LoopCost:
    """XLA's cost of a compiled program with its while loops run once (what `cost_analysis()`
    reports) and run their trip counts (what executes)."""

    flops_once: float = 0.0
    flops: float = 0.0
    bytes_once: float = 0.0
    bytes: float = 0.0
    loops: list[int] = field(default_factory=list)  # trip counts of the loops found, outermost first
    unknown_loops: int = 0  # loops whose trip count could not be read (counted once)
    error: str = ""  # why the loops could not be re-analysed (then the factors are 1)

    @property
    def flops_factor(self) -> float:
        return self.flops / self.flops_once if self.flops_once else 1.0

    @property
    def bytes_factor(self) -> float:
        return self.bytes / self.bytes_once if self.bytes_once else 1.0


def loop_cost(hlo_text: str) -> LoopCost:
    """How much XLA's cost analysis undercounts a compiled program with loops.

    `compiled.cost_analysis()` counts a while loop's body once whatever its trip count, so a
    layer scan (`model.scan_layers`) or the gradient-accumulation loop reads as one iteration.
    Here each loop body of the compiled HLO is re-parsed as a module of its own and costed by
    XLA's `HloCostAnalysis` (through the host's client: FLOPs are the same figures the TPU
    reports; bytes follow the generic cost model, so only their ratio is used), and trip counts
    come from the loop conditions (`i < N`). A program's cost is then
    cost(once) + sum over its loops of (trips x cost(body, its own loops expanded) - cost(body once)).
    """
    from jax._src.lib import hlo, xla_client

    texts, instrs, entry = _computations(hlo_text)
    defs = {i.name: i for comp in instrs.values() for i in comp}
    out = LoopCost()
    try:
        client = jax.devices("cpu")[0].client
    except RuntimeError as e:  # no host platform (JAX_PLATFORMS excludes cpu)
        out.error = str(e).splitlines()[0]
        return out
    once: dict[str, tuple[float, float]] = {}

    def cost_once(comp: str) -> tuple[float, float]:
        if comp not in once:
            needed, todo = [], [comp]
            while todo:  # the computations `comp` reaches, to make it a module of its own
                c = todo.pop()
                if c in needed or c not in texts:
                    continue
                needed.append(c)
                todo += [n for n in re.findall(r"%([\w.\-]+)", texts[c]) if n in texts and n not in needed]
            body = [texts[c] for c in texts if c in needed and c != comp]
            head, rest = texts[comp].split("\n", 1)
            head = "ENTRY " + head.removeprefix("ENTRY ")
            text = "HloModule loop_cost\n\n" + "\n\n".join(body + [head + "\n" + rest])
            module = hlo.hlo_module_from_text(_STACK_FRAME_RE.sub("", text))  # frames live in the full module
            c = xla_client._xla.hlo_module_cost_analysis(client, module)
            once[comp] = (float(c.get("flops", 0.0)), float(c.get("bytes accessed", 0.0)))
        return once[comp]

    def expanded(comp: str) -> tuple[float, float]:
        flops, nbytes = cost_once(comp)
        for ins in instrs.get(comp, []):
            called = dict(_CALLED_RE.findall(ins.attrs))
            if ins.op == "call" and "to_apply" in called:
                f1, b1 = cost_once(called["to_apply"])
                f, b = expanded(called["to_apply"])
                flops, nbytes = flops + f - f1, nbytes + b - b1
            if ins.op != "while" or "body" not in called:
                continue
            trips = _trip_count(ins, instrs, defs)
            if trips <= 0:
                out.unknown_loops += 1
                continue
            out.loops.append(trips)
            f1, b1 = cost_once(called["body"])
            f, b = expanded(called["body"])
            flops, nbytes = flops + trips * f - f1, nbytes + trips * b - b1
        return flops, nbytes

    try:
        out.flops_once, out.bytes_once = cost_once(entry)
        out.flops, out.bytes = expanded(entry)
    except Exception as e:  # an HLO text the host's parser does not take: report, do not guess
        out.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        out.flops = out.flops_once = out.bytes = out.bytes_once = 0.0
    return out
