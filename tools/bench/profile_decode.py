"""Where a decode step's time goes: the engine's decode step on SmolLM2-135M, timed by parts.

Host side (one `LLMEngine.step` of pure decoding, decode_steps=1): scheduling and row
building, the runner's host arrays and transfers, the jit'd step until its result is ready,
the device-to-host copy, and the output side (appending, detokenizing, stop checks).
Device side, as separate jit'd programs of the same shapes: the weight matmuls of every
layer, the tied LM head, paged attention over the pool, the KV writes, and sampling.
Then the same decode with several steps per dispatch (`decode_steps`).

    python tools/bench/profile_decode.py [--batches 1 32] [--context 256] [--out runs/profile-decode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


COUNTS = ("tokens per row per dispatch", "output tok/s")  # the entries that are not seconds


def _time(fn, repeats: int) -> float:
    """Median seconds of fn() (its result blocked on), after one warm-up call."""
    import jax

    jax.block_until_ready(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def device_parts(model, b: int, context: int, block_size: int, repeats: int) -> dict:
    """Seconds per decode step of each device-side part, as its own jit'd program."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from puyu_jax.kernels.paged_attention import paged_attention_reference
    from puyu_jax.serve.kv_cache import _write
    from puyu_jax.serve.sampling import SamplingArrays, SamplingFlags, sample

    cfg = model.cfg
    d, h, k, e, _, v, n_layers = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.dim_per_head,
                                  cfg.intermediate_size, cfg.vocab_size, cfg.num_layers)
    x = jnp.ones((b, 1, d), jnp.float32)
    layers = [(lyr.attn.q_proj.kernel[...], lyr.attn.k_proj.kernel[...], lyr.attn.v_proj.kernel[...],
               lyr.attn.o_proj.kernel[...], lyr.mlp.gate_proj.kernel[...], lyr.mlp.up_proj.kernel[...],
               lyr.mlp.down_proj.kernel[...]) for lyr in model.layers]

    @jax.jit
    def matmuls(x, layers):
        for wq, wk, wv, wo, wg, wu, wd in layers:
            q = jnp.einsum("btd,dhe->bthe", x, wq)
            kk = jnp.einsum("btd,dke->btke", x, wk)
            vv = jnp.einsum("btd,dke->btke", x, wv)
            x = x + jnp.einsum("bthe,hed->btd", q, wo) + 1e-6 * (kk.sum() + vv.sum())
            x = x + jnp.einsum("btf,fd->btd", jax.nn.silu(jnp.einsum("btd,df->btf", x, wg)) * jnp.einsum("btd,df->btf", x, wu), wd)
        return x

    emb = model.embed.embedding[...]
    head = jax.jit(lambda x, w: jnp.einsum("btd,vd->btv", x, w))
    nb = -(-context // block_size)
    pool = b * nb + 1
    pages = [jnp.zeros((k, pool, block_size, e), jnp.float32) for _ in range(n_layers)]
    tables = jnp.asarray(1 + np.arange(b * nb).reshape(b, nb), jnp.int32)
    lengths = jnp.full((b,), context, jnp.int32)
    q = jnp.ones((b, h, e), jnp.float32)

    @jax.jit
    def attention(q, pages, tables, lengths):
        return [paged_attention_reference(q, p, p, lengths, tables, scale=0.125) for p in pages]

    slots = jnp.asarray(tables[:, -1:] * block_size, jnp.int32)
    new = jnp.ones((b, 1, k, e), jnp.float32)

    @jax.jit
    def writes(pages, new, slots):
        return [_write(p, None, new, slots)[0] for p in pages for _ in (0, 1)]

    s = SamplingArrays(temperature=jnp.zeros((b,)), top_k=jnp.zeros((b,), jnp.int32), top_p=jnp.ones((b,)),
                       min_p=jnp.zeros((b,)), repetition_penalty=jnp.ones((b,)), presence_penalty=jnp.zeros((b,)),
                       frequency_penalty=jnp.zeros((b,)), key_data=jnp.zeros((b, 2), jnp.uint32),
                       step=jnp.zeros((b,), jnp.int32), history=jnp.full((b, 1), -1, jnp.int32),
                       history_is_output=jnp.zeros((b, 1), bool))
    logits = jax.random.normal(jax.random.key(0), (b, v))
    greedy = jax.jit(lambda lg, s: sample(lg, s, SamplingFlags()))
    topp = jax.jit(lambda lg, s: sample(lg, s, SamplingFlags(sample=True, filter=True)))
    s_topp = s.replace(temperature=jnp.full((b,), 0.7), top_p=jnp.full((b,), 0.9))
    return {
        "weight matmuls (all layers)": _time(lambda: matmuls(x, layers), repeats),
        "lm head (tied embedding)": _time(lambda: head(x, emb), repeats),
        f"paged attention (context {context})": _time(lambda: attention(q, pages, tables, lengths), repeats),
        "kv writes": _time(lambda: writes(pages, new, slots), repeats),
        "sampling, greedy": _time(lambda: greedy(logits, s), repeats),
        "sampling, top-p (sorts the vocabulary)": _time(lambda: topp(logits, s_topp), repeats),
    }


def host_parts(model, tokenizer, b: int, context: int, steps: int, decode_steps: int) -> dict:
    """Seconds per generated token (per row) of an engine decoding b sequences, split by phase."""
    import jax
    import numpy as np

    from puyu_jax.serve.config import EngineConfig, GenerationConfig
    from puyu_jax.serve.engine import LLMEngine
    from puyu_jax.serve import runner as runner_mod

    eng = LLMEngine(model, tokenizer, EngineConfig(max_num_seqs=b, num_blocks=b * (-(-(context + 4 * steps) // 16)) + 1,
                                                   max_num_batched_tokens=max(512, b * context),
                                                   enable_prefix_caching=False, decode_steps=decode_steps))
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(100, model.cfg.vocab_size, context)] for _ in range(b)]
    gen = GenerationConfig(max_new_tokens=3 * steps, ignore_eos=True)
    eng.generate(prompts, gen)  # compile every shape this run meets
    timings = {"device_get": 0.0, "jit call + wait": 0.0, "runner host arrays": 0.0}
    orig_get, orig_step, orig_decode = jax.device_get, runner_mod._step, runner_mod._decode_loop

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            if name == "jit call + wait":
                jax.block_until_ready(out)
            timings[name] += time.perf_counter() - t0
            return out
        return wrapper

    for rid, p in enumerate(prompts):
        eng.add_request(str(rid), p, gen)
    while any(s.remaining > 1 for s in eng.scheduler.running) or eng.scheduler.waiting:
        eng.step()  # prefill outside the timed part
    runner_mod._step = timed("jit call + wait", orig_step)
    runner_mod._decode_loop = timed("jit call + wait", orig_decode)
    runner_mod.jax.device_get = timed("device_get", orig_get)
    prep = {"layout": eng.runner._layout, "sampling": eng.runner._sampling}
    eng.runner._layout = timed("runner host arrays", prep["layout"])
    eng.runner._sampling = timed("runner host arrays", prep["sampling"])
    tokens0 = eng.generation_tokens_total
    t0 = time.perf_counter()
    n_steps = 0
    try:
        while eng.generation_tokens_total - tokens0 < steps * b and eng.has_unfinished_requests():
            eng.step()
            n_steps += 1
    finally:
        runner_mod._step, runner_mod._decode_loop, runner_mod.jax.device_get = orig_step, orig_decode, orig_get
    total = time.perf_counter() - t0
    made = eng.generation_tokens_total - tokens0
    for rid in range(b):
        eng.abort_request(str(rid))
    eng.step()
    out = {k: v / n_steps for k, v in timings.items()}
    out["engine (scheduling, outputs, detokenizing)"] = total / n_steps - sum(out.values())
    out["step total"] = total / n_steps
    out["tokens per row per dispatch"] = made / b / n_steps
    out["output tok/s"] = made / total
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--steps", type=int, default=24, help="decode tokens per row timed")
    p.add_argument("--decode-steps", type=int, default=8, help="steps per dispatch for the chunked run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--out", default="runs/profile-decode.json")
    args = p.parse_args(argv)
    from puyu_jax.pretrained import load_pretrained

    pre = load_pretrained(args.model)
    report = {"model": args.model, "context": args.context, "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "batches": {}}
    for b in args.batches:
        r = {"device parts (s per step)": device_parts(pre.model, b, args.context, 16, args.repeats),
             "engine, 1 step per dispatch (s per step)": host_parts(pre.model, pre.tokenizer, b, args.context,
                                                                    args.steps, 1),
             f"engine, {args.decode_steps} steps per dispatch (s per dispatch)": host_parts(
                 pre.model, pre.tokenizer, b, args.context, args.steps, args.decode_steps)}
        report["batches"][b] = r
        print(f"batch {b}:")
        for part, vals in r.items():
            print(f"  {part}")
            for k, v in vals.items():
                seconds = k not in COUNTS
                print(f"    {k:45s} {v * 1e3 if seconds else v:10.2f}{' ms' if seconds else ''}")
    report["loadavg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
