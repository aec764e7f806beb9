"""Prefill and decode throughput: the puyu engine (jit, paged KV cache) vs transformers (torch) on SmolLM2-135M.

Both load the same GGUF (SmolLM2-135M-Instruct, dequantized to fp32) and run on the
CPU with the same number of threads. Prefill: one forward over a batch of prompts.
Decode: greedy new tokens after the prefill (`generate` minus its prefill, on both sides).

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
    import numpy as np

    from puyu_jax.pretrained import load_pretrained
    from puyu_jax.serve import EngineConfig, GenerationConfig, LLMEngine

    pre = load_pretrained(path)
    rng = np.random.default_rng(0)
    out = {}
    for b in batches:
        prompts = rng.integers(100, pre.cfg.vocab_size, (b, prompt_len)).tolist()
        blocks = 1 + b * -(-(prompt_len + new_tokens) // 16)
        eng = LLMEngine(pre.model, None, EngineConfig(max_num_seqs=b, max_num_batched_tokens=b * prompt_len,
                                                      num_blocks=blocks, enable_prefix_caching=False))
        first = GenerationConfig(max_new_tokens=1, ignore_eos=True)
        full = GenerationConfig(max_new_tokens=new_tokens, ignore_eos=True)
        eng.generate(prompts, full)  # compile
        t_prefill, _ = _best(lambda: eng.generate(prompts, first), repeats)
        t_gen, _ = _best(lambda: eng.generate(prompts, full), repeats)
        out[b] = (b * prompt_len / t_prefill, b * (new_tokens - 1) / max(t_gen - t_prefill, 1e-9))
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
