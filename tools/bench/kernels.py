"""Kernel micro-benchmarks: paged decode attention (float / int8 pages) and the int4 matmul.

Each row times the Pallas kernel and its plain-JAX twin at decode-like shapes (jit, warmed up,
median of --repeats) and reports the bytes each call must read plus the achieved GB/s.
On a GPU / TPU both the compiled kernels and the twins are timed. On CPU the twins are what the
engine runs, so they are timed at every shape; Pallas on CPU is interpret mode only (a
correctness tool), timed at one tiny shape and labelled "interpret".

    python tools/bench/kernels.py [--batches 1 8 32] [--contexts 512 2048] [--ms 1 8 32] [--repeats 5]
    python tools/bench/kernels.py --only forms     # what XLA's backend does fastest for y = x @ W

The "forms" rows time one `[m, K] x [K, N]` product in every form a quantized weight could take
on this backend: f32 dot, bf16 dot (f32 accumulation), int8 x int8 -> int32 dot (activations
quantized per row), dequantize-then-dot (the twins: int4 groups of 32 with minimums, int8
groups of 32), and dequantization fused into a multiply-reduce (no dot; nothing materialized).
"""

from __future__ import annotations

import argparse
import statistics
import time

# (name, query heads, kv heads, head dim)
ATTN_SHAPES = [("smollm2", 9, 3, 64), ("7b", 32, 32, 128)]
# (name, K, N, group size): 576 is not a multiple of 128, so SmolLM2's MLP uses groups of 64
MATMUL_SHAPES = [("576->1536", 576, 1536, 64), ("4096->11008", 4096, 11008, 128)]


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--ms", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-kv-mb", type=float, default=None,
                   help="skip attention rows whose KV cache exceeds this (default: 512 on CPU, no limit elsewhere)")
    p.add_argument("--markdown", help="also write the table to this markdown file")
    p.add_argument("--only", choices=("attention", "int4", "forms"), help="run one group of rows")
    return p.parse_args()


def _median_s(fn, repeats):
    fn()  # compile + warm up
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _attention_rows(args, on_cpu):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from puyu_jax.kernels import paged_attention
    from puyu_jax.quant.kv import quantize_kv

    float_dtype = jnp.float32 if on_cpu else jnp.bfloat16
    max_kv = args.max_kv_mb if args.max_kv_mb is not None else (512 if on_cpu else float("inf"))
    rng = np.random.default_rng(0)
    rows = []

    def one(name, h, kh, e, b, ctx, int8, impls):
        s = args.block_size
        blocks = -(-ctx // s)
        n = b * blocks
        itemsize = 1 if int8 else jnp.dtype(float_dtype).itemsize
        kv_bytes = 2 * b * ctx * kh * e * itemsize + (2 * b * ctx * kh * 4 if int8 else 0)
        if kv_bytes / 2**20 > max_kv:
            return
        kp = jnp.asarray(rng.standard_normal((kh, n, s, e)), float_dtype)
        vp = jnp.asarray(rng.standard_normal((kh, n, s, e)), float_dtype)
        ks = vs = None
        if int8:
            (kp, ks), (vp, vs) = quantize_kv(kp), quantize_kv(vp)
        q = jnp.asarray(rng.standard_normal((b, h, e)), float_dtype)
        lengths = jnp.full((b,), ctx, jnp.int32)
        tables = jnp.asarray(rng.permutation(n).reshape(b, blocks), jnp.int32)
        total = kv_bytes + 2 * q.size * q.dtype.itemsize
        for label, impl in impls:
            fn = jax.jit(lambda q, kp, vp, ks, vs, impl=impl: paged_attention(
                q, kp, vp, lengths, tables, scale=e ** -0.5, k_scale=ks, v_scale=vs, impl=impl))
            t = _median_s(lambda: fn(q, kp, vp, ks, vs).block_until_ready(), args.repeats)
            kind = "int8" if int8 else jnp.dtype(float_dtype).name
            rows.append((f"paged attn {kind}", f"{name} b={b} ctx={ctx}", label, t, total))

    if on_cpu:
        impls = [("twin (jit)", "reference")]
    else:
        impls = [("kernel", "pallas"), ("twin (jit)", "reference")]
    for int8 in (False, True):
        for name, h, kh, e in ATTN_SHAPES:
            for b in args.batches:
                for ctx in args.contexts:
                    one(name, h, kh, e, b, ctx, int8, impls)
    if on_cpu:
        for int8 in (False, True):
            one("smollm2", 9, 3, 64, 1, 64, int8, [("kernel (interpret)", "pallas"), ("twin (jit)", "reference")])
    return rows


def _matmul_rows(args, on_cpu):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from puyu_jax.kernels import int4_matmul, pack_int4

    dtype = jnp.float32 if on_cpu else jnp.bfloat16
    rng = np.random.default_rng(1)
    rows = []

    def one(name, k, n, m, impls, group_size=128):
        qweight = pack_int4(jnp.asarray(rng.integers(0, 16, (k, n)), jnp.uint8))
        scales = jnp.asarray(rng.uniform(0.005, 0.05, (k // group_size, n)), dtype)
        zeros = jnp.asarray(rng.integers(0, 16, (k // group_size, n)), dtype)
        x = jnp.asarray(rng.standard_normal((m, k)), dtype)
        itemsize = jnp.dtype(dtype).itemsize
        total = qweight.size + 2 * scales.size * itemsize + (m * k + m * n) * itemsize
        for label, impl in impls:
            fn = jax.jit(lambda x, w, s, z, impl=impl: int4_matmul(x, w, s, z, group_size=group_size, impl=impl))
            t = _median_s(lambda: fn(x, qweight, scales, zeros).block_until_ready(), args.repeats)
            rows.append((f"int4 matmul {jnp.dtype(dtype).name}", f"{name} m={m}", label, t, total))

    impls = [("twin (jit)", "reference")] if on_cpu else [("kernel", "pallas"), ("twin (jit)", "reference")]
    for name, k, n, group_size in MATMUL_SHAPES:
        for m in args.ms:
            one(name, k, n, m, impls, group_size)
    if on_cpu:
        one("256->256", 256, 256, 1, [("kernel (interpret)", "pallas"), ("twin (jit)", "reference")])
    return rows


FORM_SHAPES = [("smollm2 mlp 576->1536", 576, 1536), ("smollm2 down 1536->576", 1536, 576),
               ("smollm2 lm_head 576->49152", 576, 49152)]


def _form_rows(args):
    """y = x @ W in each form a quantized weight could be computed in (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from puyu_jax.kernels import int4_matmul_reference, int8_matmul_reference, pack_int4

    rng = np.random.default_rng(2)
    rows = []
    g = 32
    for name, k, n in FORM_SHAPES:
        w = rng.normal(0, 0.05, (k, n)).astype(np.float32)
        w32, w16 = jnp.asarray(w), jnp.asarray(w, jnp.bfloat16)
        q4 = pack_int4(jnp.asarray(rng.integers(0, 16, (k, n)), jnp.uint8))
        s = jnp.asarray(rng.uniform(0.005, 0.05, (k // g, n)), jnp.float16)
        mins = jnp.asarray(rng.uniform(-0.4, -0.1, (k // g, n)), jnp.float16)
        q8 = jnp.asarray(rng.integers(-127, 128, (k, n)), jnp.int8)
        q8c = jnp.asarray(rng.integers(-127, 128, (k, n)), jnp.int8)  # per-channel scale: int8 x int8 dot
        sc = jnp.asarray(rng.uniform(1e-4, 1e-3, (n,)), jnp.float32)

        def int8_dot(x, q, sc):
            xs = jnp.maximum(jnp.max(jnp.abs(x), axis=1, keepdims=True), 1e-8) / 127
            xq = jnp.round(x / xs).astype(jnp.int8)
            acc = jax.lax.dot(xq, q, preferred_element_type=jnp.int32)
            return acc.astype(jnp.float32) * xs * sc

        def fused4(x, q, s, m):
            lo = (q & 0xF).astype(jnp.float32).reshape(k // g, g // 2, n)
            hi = (q >> 4).astype(jnp.float32).reshape(k // g, g // 2, n)
            sf, mf = s.astype(jnp.float32)[:, None], m.astype(jnp.float32)[:, None]
            xe = x[:, 0::2].reshape(-1, k // g, g // 2, 1)
            xo = x[:, 1::2].reshape(-1, k // g, g // 2, 1)
            return jnp.sum(xe * (lo * sf + mf) + xo * (hi * sf + mf), axis=(1, 2))

        # weights are arguments, not closed-over constants (XLA would fold the dequantization away)
        forms = [
            ("f32 dot", lambda x, w: jnp.dot(x, w), (w32,), 4 * k * n),
            ("bf16 dot", lambda x, w: jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32),
             (w16,), 2 * k * n),
            ("int8 x int8 -> int32 dot", int8_dot, (q8c, sc), k * n),
            ("int8 g32: dequant, f32 dot", lambda x, q, s: int8_matmul_reference(x, q, s, group_size=g), (q8, s),
             k * n),
            ("int4 g32 min: dequant, f32 dot",
             lambda x, q, s, m: int4_matmul_reference(x, q, s, group_size=g, mins=m), (q4, s, mins), k * n // 2),
            ("int4 g32 min: fused multiply-reduce", fused4, (q4, s, mins), k * n // 2),
        ]
        for m in args.ms:
            x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
            for label, f, weights, wbytes in forms:
                if "multiply-reduce" in label and m * k * n > 64 * 2**20:
                    continue  # compute-bound there: far slower than any dot, not worth the wait
                fn = jax.jit(f)
                t = _median_s(lambda: fn(x, *weights).block_until_ready(), args.repeats)
                rows.append(("x @ W forms", f"{name} m={m}", label, t, wbytes))
    return rows


def main():
    args = _parse()
    import jax
    from rich.console import Console
    from rich.table import Table

    backend = jax.default_backend()
    on_cpu = backend == "cpu"
    console = Console()
    console.print(f"backend {backend} ({jax.devices()[0].device_kind}), block_size {args.block_size}, "
                  f"median of {args.repeats}")
    rows = []
    if args.only in (None, "attention"):
        rows += _attention_rows(args, on_cpu)
    if args.only in (None, "int4"):
        rows += _matmul_rows(args, on_cpu)
    if args.only in (None, "forms"):
        rows += _form_rows(args)
    table = Table(title="kernel vs twin (bytes = data each call must read; GB/s = bytes / time)")
    cols = ("op", "shape", "impl", "time (ms)", "MB", "GB/s")
    for col in cols:
        table.add_column(col, justify="right")
    text_rows = []
    for op, shape, impl, t, nbytes in rows:
        text_rows.append((op, shape, impl, f"{t * 1e3:.3f}", f"{nbytes / 1e6:.2f}", f"{nbytes / t / 1e9:.2f}"))
        table.add_row(*text_rows[-1])
    console.print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| " + " | ".join(cols) + " |\n|---|---|---|---:|---:|---:|\n")
            for r in text_rows:
                f.write("| " + " | ".join(r) + " |\n")


if __name__ == "__main__":
    main()
