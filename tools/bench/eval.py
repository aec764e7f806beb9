"""PPL scoring throughput: batched through the engine path vs one forward pass per sample.

Scores every option of `--samples` items of a PPL dataset (default ARC-e) with SmolLM2-135M:
  * batched: `LocalBackend` (requests sorted by length, right-padded to power-of-two buckets,
    `--batch-size` rows per jit'd forward);
  * per sample: one forward pass per request at batch 1, bucketed the same way (so compiles
    are shared and only the batching differs);
  * per sample, exact shapes: batch 1 at each request's own length (a fresh compile per new length).
Each is run twice; the second (warm, compiled) run gives samples/s.

    python tools/bench/eval.py [--dataset arc-e] [--samples 64] [--batch-size 16] [--data-root ../shared/data/eval]
"""

from __future__ import annotations

import argparse
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dataset", default="arc-e")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--data-root", default="", help="full sets (e.g. ../shared/data/eval); default: shipped subset")
    p.add_argument("--skip-exact", action="store_true", help="skip the exact-shape per-sample run")
    return p.parse_args()


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    args = _parse()
    import jax
    import numpy as np
    from flax import nnx

    from puyu_jax.eval.backends.local import LocalBackend
    from puyu_jax.eval.config import load_dataset_config
    from puyu_jax.eval.datasets import load_dataset
    from puyu_jax.eval.prompts import build_prompt, continuations
    from puyu_jax.pretrained import load_pretrained

    pre = load_pretrained(args.model)
    ds = load_dataset(load_dataset_config(args.dataset, [f"max_samples={args.samples}"], args.data_root))
    reqs = [(build_prompt(ds, r), c) for r in ds.test for _, c in continuations(ds, r)]
    n = len(ds.test)
    print(f"{args.model} on {args.dataset}: {n} samples, {len(reqs)} option requests, backend {jax.default_backend()}")
    rows = []
    batched = LocalBackend(pre.model, pre.tokenizer, batch_size=args.batch_size, token_budget=1 << 20)
    single = LocalBackend(pre.model, pre.tokenizer, batch_size=1)
    for label, backend in ((f"batched (rows <= {args.batch_size})", batched), ("per sample, bucketed", single)):
        cold, ref = _timed(lambda b=backend: b.loglikelihood(reqs))
        warm, out = _timed(lambda b=backend: b.loglikelihood(reqs))
        rows.append((label, cold, warm))
        if backend is single:
            diff = max(abs(a.logprob - b.logprob) for a, b in zip(out, batched_out))
            print(f"max |logprob| difference batched vs per-sample: {diff:.2e}")
        batched_out = ref
    if not args.skip_exact:
        graphdef, state = nnx.split(pre.model)
        fwd = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t)[0])
        ids = [batched.encode(batched.render(p) + c) for p, c in reqs]

        def exact():
            for x in ids:
                np.asarray(fwd(state, np.asarray([x], np.int32)))

        cold, _ = _timed(exact)
        warm, _ = _timed(exact)
        rows.append(("per sample, exact shapes", cold, warm))
    print("| scoring | first run s (with compiles) | warm s | samples/s (warm) | speed-up |")
    print("|---|---|---|---|---|")
    base = rows[1][2]
    for label, cold, warm in rows:
        print(f"| {label} | {cold:.2f} | {warm:.2f} | {n / warm:.1f} | {base / warm:.2f}x |")


if __name__ == "__main__":
    main()
