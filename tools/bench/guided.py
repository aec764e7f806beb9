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

    python tools/bench/guided.py --batch 1,8 --new-tokens 64
"""

from __future__ import annotations

import argparse
import json
import time


def run(engine, prompts, gen) -> tuple[float, int]:
    t0 = time.perf_counter()
    outs = engine.generate(prompts, [gen] * len(prompts))
    return time.perf_counter() - t0, sum(len(o.outputs[0].token_ids) for o in outs)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

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
