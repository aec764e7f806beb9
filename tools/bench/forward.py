"""Prefill and decode throughput: puyu (jit, dense KV cache) vs transformers (torch) on SmolLM2-135M.

Both load the same GGUF (SmolLM2-135M-Instruct, dequantized to fp32) and run on the
CPU with the same number of threads. Prefill: one forward over a batch of prompts.
Decode: greedy new tokens after the prefill (transformers: `generate` minus its prefill).

    python tools/bench/forward.py [--prompt-len 128] [--new-tokens 64] [--batches 1 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--markdown", help="also write the table to this markdown file")
    return p.parse_args()


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def bench_puyu(path, batches, prompt_len, new_tokens, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from puyu_jax.generate import Generator, SamplingConfig, _prefill
    from puyu_jax.models import init_cache
    from puyu_jax.pretrained import load_pretrained

    pre = load_pretrained(path)
    gen = Generator(pre.model, prompt_bucket=prompt_len)
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        prompts = rng.integers(100, pre.cfg.vocab_size, (b, prompt_len)).tolist()
        knobs = (0.0, 0, 1.0)
        key = jax.random.key(0)

        def prefill():
            cache = init_cache(pre.cfg, b, prompt_len, starts=np.zeros(b, np.int32))
            tok, _, _ = _prefill(gen.graphdef, gen.state, jnp.asarray(prompts, jnp.int32), cache, key, knobs)
            tok.block_until_ready()

        prefill()  # compile
        t_prefill, _ = _best(prefill, repeats)
        sampling = SamplingConfig(max_new_tokens=new_tokens)
        gen.generate(prompts, sampling)  # compile decode
        decode_times = []
        for _ in range(repeats):
            gen.stats.decode_s = 0.0
            gen.stats.decode_steps = 0
            gen.generate(prompts, sampling)
            decode_times.append(gen.stats.decode_s / max(gen.stats.decode_steps, 1))
        out[b] = (b * prompt_len / t_prefill, b / min(decode_times))
    return out


def bench_transformers(path, batches, prompt_len, new_tokens, repeats, threads):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        ids = torch.tensor(rng.integers(100, model.config.vocab_size, (b, prompt_len)))
        mask = torch.ones_like(ids)

        def prefill():
            with torch.no_grad():
                model(ids, attention_mask=mask, use_cache=True)

        prefill()
        t_prefill, _ = _best(prefill, repeats)

        def generate():
            with torch.no_grad():
                model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                               do_sample=False, pad_token_id=0)

        generate()
        t_gen, _ = _best(generate, repeats)
        out[b] = (b * prompt_len / t_prefill, b * (new_tokens - 1) / max(t_gen - t_prefill, 1e-9))
    return out


def main():
    args = _parse()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from rich.console import Console
    from rich.table import Table

    from puyu_jax.models.gguf import find_smollm2_gguf

    path = find_smollm2_gguf()
    console = Console()
    console.print(f"SmolLM2-135M-Instruct fp32, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
                  f"{args.threads} threads, best of {args.repeats}")
    ours = bench_puyu(path, args.batches, args.prompt_len, args.new_tokens, args.repeats)
    theirs = bench_transformers(path, args.batches, args.prompt_len, args.new_tokens, args.repeats, args.threads)
    table = Table(title="tokens/s (higher is better)")
    for col in ("phase", "batch", "puyu (jax jit)", "transformers (torch)", "puyu / transformers"):
        table.add_column(col, justify="right")
    rows = []
    for phase, idx in (("prefill", 0), ("decode", 1)):
        for b in args.batches:
            a, t = ours[b][idx], theirs[b][idx]
            rows.append((phase, str(b), f"{a:,.1f}", f"{t:,.1f}", f"{a / t:.2f}x"))
            table.add_row(*rows[-1])
    console.print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| phase | batch | puyu (jax jit) | transformers (torch) | puyu / transformers |\n")
            f.write("|---|---:|---:|---:|---:|\n")
            for r in rows:
                f.write("| " + " | ".join(r) + " |\n")


if __name__ == "__main__":
    main()
