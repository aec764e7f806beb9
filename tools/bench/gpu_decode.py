"""Decode and prefill throughput of the serving engine on a 7B-shaped model (one GPU).

Random weights from a model config (`configs/models/`, default llama2-7b) initialised by
puyu, served by `LLMEngine` in bf16 and with int4 weights (`quant="int4"`). Per batch size:
prefill tokens/s (b prompts of `--prompt-len`, one new token each), then `--new-tokens`
greedy tokens per row (EOS ignored): decode tokens/s (after the last first token), TPOT,
and end-to-end output tokens/s (b x new tokens / whole time, prefill included — the
figure LMDeploy's `profile_generation` reports). Every shape is run once untimed first
(compilation).

LMDeploy's published TurboMind figures for Llama-2-7B are printed beside ours as citations
only: other hardware (A100-80G, RTX 4090), other software, measured by its authors.

    python tools/bench/gpu_decode.py                    # one GPU
    python tools/bench/gpu_decode.py --smoke            # tiny config on CPU: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

# Cited, not measured here. Source: InternLM/lmdeploy docs/en/benchmark/a100_fp16.md
# ("Static Inference Benchmark", llama2-7b, lmdeploy v0.1.0a1, A100-80G, tp 1, fp16,
# 128 prompt / 128 output tokens, column "throughput(out tok/s)") and
# docs/en/quantization/w4a16.md ("Performance": Llama-2-7B-chat 4-bit AWQ, RTX 4090,
# batch 1, 1 prompt token, 512 output tokens).
LMDEPLOY_CITED = {
    ("llama2-7b", "bf16"): {
        "source": "lmdeploy docs/en/benchmark/a100_fp16.md: TurboMind fp16, A100-80G, in 128 / out 128",
        "out_tok_s": {1: 102.21, 16: 1272.47, 32: 2125.47, 64: 3024.07},
    },
    ("llama2-7b", "int4"): {
        "source": "lmdeploy docs/en/quantization/w4a16.md: TurboMind w4a16 (AWQ), RTX 4090, in 1 / out 512",
        "out_tok_s": {1: 206.4},
    },
}


def measure(eng, gen_cls, b: int, prompt_len: int, new_tokens: int, vocab: int, seed: int) -> dict:
    """One batch size: prefill tokens/s, decode tokens/s, TPOT, end-to-end output tokens/s."""
    import numpy as np

    rng = np.random.default_rng(seed)
    prompts = rng.integers(3, vocab, (b, prompt_len)).tolist()

    def run(max_new: int) -> tuple[float, list]:
        t0 = time.time()
        for i, p in enumerate(prompts):
            eng.add_request(f"b{b}-{max_new}-{time.monotonic_ns()}-{i}", p,
                            gen_cls(max_new_tokens=max_new, ignore_eos=True, temperature=0.0), arrival_time=t0)
        outs = []
        while eng.has_unfinished_requests():
            outs += [o for o in eng.step() if o.finished]
        return time.time() - t0, outs

    run(1), run(new_tokens)  # compile every shape this batch size meets
    t_prefill, _ = run(1)
    total, outs = run(new_tokens)
    start = min(o.metrics.arrival_time for o in outs)
    last_first = max(o.metrics.first_token_time for o in outs)
    end = max(o.metrics.finished_time for o in outs)
    tpots = [o.metrics.tpot for o in outs if o.metrics.tpot is not None]
    return {
        "batch": b,
        "prefill_tok_s": b * prompt_len / t_prefill,
        "decode_tok_s": b * (new_tokens - 1) / max(end - last_first, 1e-9),
        "tpot_ms": 1e3 * sum(tpots) / len(tpots) if tpots else float("nan"),
        "e2e_out_tok_s": b * new_tokens / (end - start),
        "ttft_mean_ms": 1e3 * sum(o.metrics.ttft for o in outs) / len(outs),
    }


def bench_variant(model_name: str, dtype: str, quant: str, batches: list[int], prompt_len: int, new_tokens: int,
                  block_size: int) -> tuple[list[dict], dict]:
    import jax

    from puyu_jax.pretrained import load_pretrained
    from puyu_jax.serve.config import EngineConfig, GenerationConfig
    from puyu_jax.serve.engine import LLMEngine

    t0 = time.perf_counter()
    pre = load_pretrained(model_name, dtype=dtype, param_dtype=dtype)
    max_b = max(batches)
    blocks = max_b * math.ceil((prompt_len + new_tokens) / block_size) + 8
    cfg = EngineConfig(max_num_seqs=max_b, num_blocks=blocks, block_size=block_size, dtype=dtype, quant=quant,
                       max_num_batched_tokens=max(512, max_b * prompt_len), enable_prefix_caching=False,
                       max_model_len=prompt_len + new_tokens + block_size)
    eng = LLMEngine(pre.model, None, cfg, model_name=model_name)
    del pre
    info = {"load_s": round(time.perf_counter() - t0, 1), "device": str(jax.devices()[0])}
    rows = []
    for b in batches:
        rows.append(measure(eng, GenerationConfig, b, prompt_len, new_tokens, eng.model_config.vocab_size, seed=b))
        r = rows[-1]
        print(f"  {quant:>4} b={b:<3} prefill {r['prefill_tok_s']:,.0f} tok/s  decode {r['decode_tok_s']:,.1f} tok/s  "
              f"TPOT {r['tpot_ms']:.2f} ms  e2e {r['e2e_out_tok_s']:,.1f} out tok/s", flush=True)
    return rows, info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama2-7b", help="a config under configs/models (e.g. internlm2-7b)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quants", default="none,int4")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--out", default="runs/bench-gpu-decode")
    p.add_argument("--smoke", action="store_true", help="tiny config, batches 1 2, 16 in / 8 out (runs on CPU)")
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.dtype, args.batches, args.prompt_len, args.new_tokens = "tiny", "float32", [1, 2], 16, 8
    import jax
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    console.print(f"{args.model} (random weights), {args.dtype}, prompt {args.prompt_len}, {args.new_tokens} new "
                  f"tokens, on {jax.devices()[0].device_kind} ({jax.default_backend()})")
    results, infos = {}, {}
    for quant in [q.strip() for q in args.quants.split(",") if q.strip()]:
        try:
            results[quant], infos[quant] = bench_variant(args.model, args.dtype, quant, args.batches, args.prompt_len,
                                                         args.new_tokens, args.block_size)
        except Exception as e:  # noqa: BLE001 - keep the other variant's figures
            console.print(f"[red]{quant}: failed: {type(e).__name__}: {e}[/red]")
            results[quant], infos[quant] = [], {"error": f"{type(e).__name__}: {e}"}
    table = Table(title=f"{args.model}: serving engine, {jax.devices()[0].device_kind}")
    for h in ("weights", "batch", "prefill tok/s", "decode tok/s", "TPOT ms", "e2e out tok/s",
              "LMDeploy TurboMind (cited) out tok/s"):
        table.add_column(h, justify="right")
    for quant, rows in results.items():
        key = (args.model, "int4" if quant == "int4" else "bf16")
        cited = LMDEPLOY_CITED.get(key) if args.dtype == "bfloat16" or quant == "int4" else None
        for r in rows:
            c = cited["out_tok_s"].get(r["batch"]) if cited else None
            table.add_row(args.dtype if quant == "none" else f"int4 ({args.dtype} act.)", str(r["batch"]),
                          f"{r['prefill_tok_s']:,.0f}", f"{r['decode_tok_s']:,.1f}", f"{r['tpot_ms']:.2f}",
                          f"{r['e2e_out_tok_s']:,.1f}", f"{c:,.1f}" if c else "not compared")
    console.print(table)
    for key, c in LMDEPLOY_CITED.items():
        if key[0] == args.model:
            console.print(f"cited: {c['source']} (different hardware and settings; not measured here)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_decode.json").write_text(json.dumps({"config": vars(args), "device": jax.devices()[0].device_kind,
                                                     "info": infos, "results": results}, indent=1))
    console.print(f"wrote {out}/gpu_decode.json")


if __name__ == "__main__":
    main()
