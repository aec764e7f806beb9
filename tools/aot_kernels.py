"""The TPU paged-attention kernel compiled for a TPU chip here: one page per grid step (as of commit
9d6aeb1, read from git) against several pages per grid step (now), at 7B decode shapes.

    python tools/aot_kernels.py [--topology v5e:2x2] [--before 9d6aeb1]

Prints a markdown table: grid steps, compiled memory, XLA cost analysis, code size, compile time
and a per-call time model (grid steps x the ~0.35 us fixed cost of a Pallas TPU grid step, against
the kernel's bytes at HBM bandwidth). Nothing runs on a TPU: these are compiler figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import SingleDeviceSharding  # noqa: E402

from puyu_jax.aot.chips import chip_for  # noqa: E402
from puyu_jax.aot.compile import tpu_devices  # noqa: E402
current = importlib.import_module("puyu_jax.kernels.paged_attention")  # the module (the package exports the function)

GRID_STEP_S = 0.35e-6  # Pallas TPU guide (matmul): fixed cost of one grid step
B, H, KH, E, S, PAGES, TABLE = 32, 32, 8, 128, 16, 8192, 256  # 7B GQA decode, 4096-token tables


def _old_module(commit: str):
    src = subprocess.run(["git", "show", f"{commit}:puyu_jax/kernels/paged_attention.py"], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent).stdout
    path = Path(tempfile.mkdtemp()) / "paged_attention_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("paged_attention_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _grid(jaxpr) -> tuple:
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            return tuple(eqn.params["grid_mapping"].grid)
        for sub in eqn.params.values():
            inner = getattr(sub, "jaxpr", None)
            if inner is not None and (got := _grid(inner)):
                return got
    return ()


def measure(fn, device, page_dtype) -> dict:
    sh = SingleDeviceSharding(device)
    sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
    scales = sds((KH, PAGES, S), jnp.float32) if page_dtype == jnp.int8 else None
    args = (sds((B, H, E), jnp.bfloat16), sds((KH, PAGES, S, E), page_dtype), sds((KH, PAGES, S, E), page_dtype),
            sds((B,), jnp.int32), sds((B, TABLE), jnp.int32), scales, scales)
    jitted = jax.jit(fn)
    grid = _grid(jax.make_jaxpr(fn)(*args).jaxpr)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
    steps = 1
    for g in grid:
        steps *= g
    # What the kernel itself must move: the attended pages (every table entry), plus scales.
    keys = B * KH * TABLE * S
    kv_bytes = 2 * keys * E * jnp.dtype(page_dtype).itemsize + (2 * keys * 4 if scales is not None else 0)
    return {"grid": grid, "steps": steps, "temp": mem.temp_size_in_bytes, "code": mem.generated_code_size_in_bytes,
            "flops": cost.get("flops", 0.0), "bytes": cost.get("bytes accessed", 0.0), "compile_s": compile_s,
            "kv_bytes": kv_bytes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topology", default="v5e:2x2")
    ap.add_argument("--before", default="9d6aeb1", help="git commit holding the one-page-per-step kernel")
    ap.add_argument("--pages-per-block", type=int, nargs="+", default=[8, 16, 32])
    args = ap.parse_args()
    device = tpu_devices(args.topology)[0]
    chip = chip_for(device.device_kind)
    old = _old_module(args.before)

    def before(q, k, v, lengths, tables, ks, vs):
        return old._paged_pallas(q, k, v, lengths, tables, ks, vs, scale=E ** -0.5, window=0, lowering="tpu",
                                 interpret=False, pages_per_chunk=32)

    def now(ppb):
        def f(q, k, v, lengths, tables, ks, vs):
            return current._paged_pallas(q, k, v, lengths, tables, ks, vs, scale=E ** -0.5, window=0,
                                         lowering="tpu", interpret=False, pages_per_chunk=32, pages_per_block=ppb)
        return f

    print(f"{chip.name}, decode b={B}, {H} heads / {KH} kv heads of {E}, pages of {S}, tables of {TABLE} pages, "
          f"pool {PAGES} pages\n")
    print("| pages | kernel | grid | grid steps | step overhead (x0.35 us) | KV bytes at HBM bw | temp bytes | "
          "XLA flops | XLA bytes | code | compile |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for page_dtype, name in ((jnp.bfloat16, "bf16"), (jnp.int8, "int8")):
        rows = [(f"{args.before}: 1 page/step", before)] + [(f"now: {p} pages/step", now(p))
                                                            for p in args.pages_per_block]
        for label, fn in rows:
            r = measure(fn, device, page_dtype)
            print(f"| {name} | {label} | {r['grid']} | {r['steps']:,} | {r['steps'] * GRID_STEP_S * 1e3:.2f} ms | "
                  f"{r['kv_bytes'] / chip.hbm_bandwidth * 1e3:.2f} ms | {r['temp'] / 2**20:.1f} MiB | "
                  f"{r['flops']:.3g} | {r['bytes'] / 2**20:.1f} MiB | {r['code'] / 1024:.0f} KiB | "
                  f"{r['compile_s']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
