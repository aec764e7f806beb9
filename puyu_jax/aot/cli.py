"""`puyu aot {train,finetune,serve} CONFIG --topology T`: compile a real step for a TPU slice here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

GIB = 2**30


def _fmt_bytes(n: float) -> str:
    return f"{n / GIB:,.2f} GiB"


def _fmt_s(t: float) -> str:
    return f"{t * 1e3:,.1f} ms" if t < 10 else f"{t:,.1f} s"


def report_rows(r) -> list[tuple[str, str]]:
    """(label, value) lines of a Report, in reading order."""
    coll = ", ".join(f"{k} x{v}" for k, v in r.collectives.items()) or "none"
    return [
        ("step", f"{r.kind} on {r.devices} x {r.chip}"),
        ("per device: arguments", _fmt_bytes(r.argument_bytes)),
        ("per device: outputs (not aliased)", _fmt_bytes(r.output_bytes - r.alias_bytes)),
        ("per device: temporaries", _fmt_bytes(r.temp_bytes)),
        ("per device: total vs HBM", f"{_fmt_bytes(r.total_bytes)} of {_fmt_bytes(r.hbm_bytes)}: "
                                     f"{'fits' if r.fits else 'DOES NOT FIT'}"),
        ("FLOPs per step per device", f"{r.flops:.3e}"),
        ("bytes accessed per device", _fmt_bytes(r.bytes_accessed)),
        ("collectives (compiled HLO)", coll),
        ("roofline step time", f"{_fmt_s(r.step_s)} ({r.bound}-bound; compute {_fmt_s(r.compute_s)}, "
                               f"HBM {_fmt_s(r.memory_s)})"),
        ("model FLOPs per step (all devices)", f"{r.model_flops:.3e}"),
        ("MFU at the roofline bound", f"{r.mfu:.1%}"),
        ("tokens/s at the bound", f"{r.tokens_per_s:,.0f}"),
        ("lower / compile time", f"{r.lower_s:,.1f} s / {r.compile_s:,.1f} s"),
    ] + [("note", n) for n in r.notes]


HINTS = {
    "train": "lower batch_size or raise grad_accum, remat=full, or shard more (parallel.preset / a bigger topology)",
    "finetune": "lower batch_size or data.seq_len, raise grad_accum, remat=full",
    "serve": "lower engine.kv_cache_memory_gb or engine.max_num_seqs, engine.quant=int4, engine.kv_dtype=int8, "
             "or raise engine.tp",
}


def _compile(args, devices, load_config):
    from puyu_jax.aot.compile import finetune_program, serve_decode_program, train_program

    if args.kind == "train":
        from puyu_jax.train.config import TrainConfig

        return train_program(load_config(TrainConfig, args.config, args.overrides), devices)
    if args.kind == "finetune":
        from puyu_jax.finetune.config import FinetuneConfig

        return finetune_program(load_config(FinetuneConfig, args.config, args.overrides), devices,
                                scan_layers=args.scan_layers)
    from puyu_jax.serve.api.config import ServeConfig

    return serve_decode_program(load_config(ServeConfig, args.config, args.overrides), devices,
                                batch=args.batch, context=args.context, param_dtype=args.param_dtype)


def _cmd_aot(args) -> int:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the compile needs no device
    import jax
    from rich.console import Console
    from rich.table import Table

    from puyu_jax.aot.compile import analyze, tpu_devices
    from puyu_jax.config import ConfigError, load_config

    if args.scan_layers and args.kind != "finetune":
        raise ConfigError(f"--scan-layers is for finetune configs; a {args.kind} config sets model.scan_layers=true"
                          if args.kind == "train" else "--scan-layers: the serve decode step runs layer by layer")
    devices = tpu_devices(args.topology)
    if args.devices:
        if args.devices > len(devices):
            raise ConfigError(f"--devices {args.devices}: the topology {args.topology} has {len(devices)}")
        devices = devices[: args.devices]
    try:
        program = _compile(args, devices, load_config)
    except jax.errors.JaxRuntimeError as e:
        first = str(e).strip().splitlines()[0]
        if "RESOURCE_EXHAUSTED" not in first:
            raise
        # The TPU compiler itself refuses a program whose buffers exceed HBM.
        raise ConfigError(f"{args.kind} does not fit: {first} ({HINTS[args.kind]})") from e
    if args.hlo:
        Path(args.hlo).parent.mkdir(parents=True, exist_ok=True)
        Path(args.hlo).write_text(program.compiled.as_text())
    report = analyze(program)
    table = Table(title=f"puyu aot {args.kind} {args.config} --topology {args.topology}", show_header=False)
    for label, value in report_rows(report):
        table.add_row(label, value)
    Console().print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": " ".join(sys.argv), "topology": args.topology,
                                               "config": args.config, "overrides": args.overrides,
                                               **report.as_dict()}, indent=2))
    if not report.fits:
        raise ConfigError(f"{report.kind} needs {_fmt_bytes(report.total_bytes)} per device but a {report.chip} "
                          f"has {_fmt_bytes(report.hbm_bytes)}: {HINTS[args.kind]}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "aot",
        help="compile a train / finetune / serve step for a TPU topology here (no TPU needed): memory, FLOPs, roofline",
        description="Compiles the real step with abstract inputs on the named TPU slice's device descriptions "
                    "(libtpu, the `tpu` extra) and reports per-device memory against HBM, FLOPs, bytes, collectives "
                    "and a roofline step time. See docs/aot.md.",
        epilog="Options go before CONFIG, key=value overrides after it. Examples:\n"
               "  puyu aot train --topology v5p:4x4x4 configs/pretrain/internlm2-7b-pod.yaml\n"
               "  puyu aot finetune --topology v5e:1x1 configs/finetune/internlm2-7b-qlora.yaml\n"
               "  puyu aot serve --topology v5e:2x4 configs/serve/default.yaml model=internlm2-7b "
               "engine.tp=8 engine.dtype=bfloat16 engine.quant=int4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("kind", choices=("train", "finetune", "serve"), help="which step: train, finetune, or serve (decode)")
    p.add_argument("config", help="TrainConfig, FinetuneConfig or ServeConfig YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    p.add_argument("--topology", required=True, help="TPU slice, e.g. v5e:2x4, v5p:4x4x4, v4:2x2x2, v6e:2x2")
    p.add_argument("--devices", type=int, default=0, help="use only the first N devices of the topology "
                                                          "(e.g. 1 chip of v5e:2x2; default all)")
    p.add_argument("--batch", type=int, default=0, help="serve: decode rows (default engine.max_num_seqs)")
    p.add_argument("--context", type=int, default=0, help="serve: tokens per row's block table "
                                                          "(default engine.max_model_len or the model's)")
    p.add_argument("--param-dtype", default="", help="serve: parameter storage dtype (default the model config's)")
    p.add_argument("--scan-layers", action="store_true",
                   help="finetune: run the layers as one lax.scan (ModelConfig.scan_layers; train configs set "
                        "model.scan_layers=true)")
    p.add_argument("--json", help="also write the report as JSON here")
    p.add_argument("--hlo", help="also write the compiled (per-device) HLO text here")
    p.set_defaults(fn=_cmd_aot)
