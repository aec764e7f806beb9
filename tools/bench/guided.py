"""The cost of constrained decoding per step: decode tokens/s with and without a grammar.

The same requests (same prompts, same number of new tokens, greedy, EOS ignored) run through
`LLMEngine` on SmolLM2-135M-Instruct free, then under a constraint that does not end before the
token budget, so every run decodes exactly the same number of steps:

  free      no constraint (the step compiles no mask)
  regex     `[a-z ,.]{N}`-style regex: the mask is filled, sent and applied every step
  json      a JSON schema of an object holding a long string field (`{"text": "...`)

Reported: output tokens/s, the wall time per step (prefill included, over the new tokens), and the host time spent filling the
masks (xgrammar's `fill_next_token_bitmask`) per step. Warm-up (compilation of each variant) is
run first and not counted.

The second part (`--micro`) times the masking itself: the jit'd sampler over [rows, 49152]
logits with and without a bitmask (greedy and temperature sampling), and xgrammar's mask fill
for one row of a JSON-schema grammar, each the median of many calls.

    python tools/bench/guided.py --batch 1,8 --new-tokens 64
    python tools/bench/guided.py --micro
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def run(engine, prompts, gen) -> tuple[float, int]:
    t0 = time.perf_counter()
    outs = engine.generate(prompts, [gen] * len(prompts))
    return time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)


def micro(vocab: int = 49152, rows=(1, 8, 32), iters: int = 200) -> None:
    """Median µs of the jit'd sampler with / without the bitmask, and of one mask fill."""
    import statistics

    import jax
    import jax.numpy as jnp

    from puyu_jax.serve.sampling import SamplingArrays, SamplingFlags, sample

    def median_us(f, *a):
        jax.block_until_ready(f(*a))
        times = []
        for _ in range(iters):
            t = time.perf_counter()
            jax.block_until_ready(f(*a))
            times.append(time.perf_counter() - t)
        return 1e6 * statistics.median(times)

    print("| rows | sampling | no mask µs | with mask µs | mask cost µs |\n|---:|---|---:|---:|---:|")
    for b in rows:
        for mode, temp in (("greedy", 0.0), ("temperature 1", 1.0)):
            s = SamplingArrays(temperature=jnp.full(b, temp), top_k=jnp.zeros(b, jnp.int32), top_p=jnp.ones(b),
                               min_p=jnp.zeros(b), repetition_penalty=jnp.ones(b), presence_penalty=jnp.zeros(b),
                               frequency_penalty=jnp.zeros(b), key_data=jnp.zeros((b, 2), jnp.uint32),
                               step=jnp.zeros(b, jnp.int32), history=-jnp.ones((b, 1), jnp.int32),
                               history_is_output=jnp.zeros((b, 1), bool))
            flags = SamplingFlags(sample=temp > 0)
            logits = jax.random.normal(jax.random.key(0), (b, vocab))
            mask = jnp.asarray(np.random.default_rng(0).integers(-2**31, 2**31, (b, -(-vocab // 32))), jnp.int32)
            free = jax.jit(lambda x, s: sample(x, s, flags))
            masked = jax.jit(lambda x, s, m: sample(x, s, flags, m))
            a, c = median_us(free, logits, s), median_us(masked, logits, s, mask)
            print(f"| {b} | {mode} | {a:.0f} | {c:.0f} | {c - a:.0f} |", flush=True)


def fill_micro(iters: int = 2000) -> None:
    """Median µs of one xgrammar mask fill (a JSON-schema grammar, SmolLM2's vocabulary)."""
    import statistics

    from puyu_jax.models.gguf import find_smollm2_gguf
    from puyu_jax.serve.config import GenerationConfig
    from puyu_jax.serve.guided import Guides, allocate_bitmask
    from puyu_jax.tokenizer import tokenizer_from_gguf

    tok = tokenizer_from_gguf(find_smollm2_gguf())
    guides = Guides.for_tokenizer(tok, tok.vocab_size, tok.eos_ids)
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
    text = '{"name": "Ada Lovelace, the first programmer", "age": 36}'
    guide = guides.guide(GenerationConfig(json_schema=schema))
    mask = allocate_bitmask(1, tok.vocab_size)
    times = []
    for t in tok.encode(text):
        for _ in range(iters // 20):
            s = time.perf_counter()
            guide.fill(mask, 0)
            times.append(time.perf_counter() - s)
        guide.accept(t)
    print(f"xgrammar fill_next_token_bitmask, one row, JSON schema: median {1e6 * statistics.median(times):.1f} µs, "
          f"p99 {1e6 * sorted(times)[int(0.99 * len(times))]:.1f} µs over {len(times)} fills")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--micro", action="store_true", help="time the masking alone (sampler and mask fill)")
    args = ap.parse_args(argv)
    if args.micro:
        micro()
        fill_micro()
        return

    from puyu_jax.serve.config import EngineConfig, GenerationConfig
    from puyu_jax.serve.engine import LLMEngine
    from puyu_jax.serve.guided import Guide

    engine = LLMEngine.from_pretrained(args.model, EngineConfig(max_num_seqs=16, enable_prefix_caching=False))
    n = args.new_tokens
    base = dict(max_new_tokens=n, ignore_eos=True)
    variants = {
        "free": GenerationConfig(**base),
        "regex": GenerationConfig(**base, regex=f"[a-z ,.]{{{4 * n}}}"),
        "json": GenerationConfig(**base, json_schema=json.dumps(
            {"type": "object", "properties": {"text": {"type": "string", "minLength": 4 * n}}, "required": ["text"]})),
    }
    fill_time = [0.0]
    fill = Guide.fill

    def timed_fill(self, bitmask, row):  # host time of mask filling
        t = time.perf_counter()
        fill(self, bitmask, row)
        fill_time[0] += time.perf_counter() - t

    Guide.fill = timed_fill
    rows = []
    for b in [int(x) for x in args.batch.split(",")]:
        prompts = [f"Write a long sentence about the number {i}." for i in range(b)]
        for name, gen in variants.items():
            run(engine, prompts, gen)  # warm-up: compiles this variant's shapes
            times, tokens = [], 0
            fill_time[0] = 0.0
            for _ in range(args.repeats):
                dt, tokens = run(engine, prompts, gen)
                times.append(dt)
            best = min(times)
            rows.append({"batch": b, "variant": name, "tok_s": tokens / best, "step_ms": 1000 * best / n,
                         "fill_ms_per_step": 1000 * fill_time[0] / (args.repeats * n)})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| batch | constraint | out tok/s | ms / step (wall) | mask fill ms / step | ÷ free |\n|---:|---|---:|---:|---:|---:|")
    for r in rows:
        free = next(x for x in rows if x["batch"] == r["batch"] and x["variant"] == "free")
        print(f"| {r['batch']} | {r['variant']} | {r['tok_s']:.1f} | {r['step_ms']:.1f} | {r['fill_ms_per_step']:.2f} | "
              f"{r['tok_s'] / free['tok_s']:.2f}x |")


if __name__ == "__main__":
    main()
