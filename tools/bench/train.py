"""Training throughput and MFU: puyu's jit'd train step vs a transformers + torch step.

Same model shapes, batch, sequence length and AdamW on both sides, random tokens.
MFU = model FLOPs per token (6 x matmul params + 6 x L x H x Dh x T for causal attention;
see README) x tokens/s over the peak: on CPU the peak is measured by a matmul probe.

    python tools/bench/train.py                      # CPU: tiny and SmolLM2-135M shapes
    python tools/bench/train.py --gpu                # one GPU: ~1B model in bf16, MFU vs measured bf16 matmul peak
"""

from __future__ import annotations

import argparse
import os
import time

SHAPES = {
    "tiny": dict(model="tiny", batch=16, seq=128),
    "smollm2-135m": dict(model="smollm2-135m", batch=4, seq=256),
    "llama-1b": dict(model="llama-1b", batch=8, seq=2048),
}


def bench_puyu(name, batch, seq, steps, dtype, remat):
    import jax
    import numpy as np

    from puyu_jax.config import load_config
    from puyu_jax.train.config import TrainConfig
    from puyu_jax.train.metrics import device_peak_flops
    from puyu_jax.train.step import Trainer, model_flops_per_token

    spec = SHAPES[name]
    cfg = load_config(TrainConfig, {"model": spec["model"], "batch_size": batch, "data": {"seq_len": seq},
                                    "steps": 1000, "remat": remat, "parallel": {"data": 1}},
                      [f"model.dtype={dtype}", "optimizer.warmup_steps=0"])
    tr = Trainer.create(cfg, jax.devices()[:1])
    state = tr.init_state()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.model.vocab_size, (batch, seq))
    b = tr.shard_batch({"tokens": tokens, "segment_ids": np.ones_like(tokens),
                        "positions": np.broadcast_to(np.arange(seq), tokens.shape)})
    state, m = tr.step_fn(state, b)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = tr.step_fn(state, b)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    peak, src = device_peak_flops()
    tok_s = batch * seq / dt
    return tok_s, model_flops_per_token(cfg.model, seq) * tok_s / peak, src, cfg.model


def bench_torch(mcfg, batch, seq, steps, threads):
    import torch
    import transformers

    torch.set_num_threads(threads)
    hf = transformers.LlamaConfig(
        vocab_size=mcfg.vocab_size, hidden_size=mcfg.hidden_size, intermediate_size=mcfg.intermediate_size,
        num_hidden_layers=mcfg.num_layers, num_attention_heads=mcfg.num_heads, num_key_value_heads=mcfg.num_kv_heads,
        max_position_embeddings=mcfg.max_position_embeddings, tie_word_embeddings=mcfg.tie_word_embeddings,
        rope_theta=mcfg.rope.theta, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(hf).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    ids = torch.randint(0, mcfg.vocab_size, (batch, seq))

    def step():
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * seq / ((time.perf_counter() - t0) / steps)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["tiny", "smollm2-135m"], choices=sorted(SHAPES))
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--gpu", action="store_true", help="one GPU, ~1B model in bf16 (no torch comparison)")
    args = p.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if args.gpu:
        from puyu_jax.train.metrics import measured_matmul_flops

        peak = measured_matmul_flops(8192, "bfloat16")
        spec = SHAPES["llama-1b"]
        tok_s, mfu, src, _ = bench_puyu("llama-1b", spec["batch"], spec["seq"], args.steps, "bfloat16", "save_dots")
        console.print(f"llama-1b bf16: {tok_s:,.0f} tokens/s, MFU {mfu:.1%} of the {src} peak; "
                      f"measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s -> {mfu * device_peak_flops_ratio(peak):.1%} of it")
        return
    table = Table(title="training step, tokens/s (fp32, CPU, same batch / seq / AdamW)")
    for col in ("model", "batch x seq", "puyu tok/s", "puyu MFU", "torch tok/s", "puyu / torch"):
        table.add_column(col, justify="right")
    for name in args.shapes:
        spec = SHAPES[name]
        tok_s, mfu, src, mcfg = bench_puyu(name, spec["batch"], spec["seq"], args.steps, "float32", "none")
        t_tok_s = bench_torch(mcfg, spec["batch"], spec["seq"], args.steps, args.threads)
        table.add_row(name, f"{spec['batch']} x {spec['seq']}", f"{tok_s:,.0f}", f"{mfu:.1%}", f"{t_tok_s:,.0f}",
                      f"{tok_s / t_tok_s:.2f}x")
    console.print(table)
    console.print(f"MFU peak: {src}")


def device_peak_flops_ratio(measured_peak: float) -> float:
    """spec peak / measured peak, to restate an MFU against the measured matmul peak."""
    from puyu_jax.train.metrics import device_peak_flops

    spec, _ = device_peak_flops()
    return spec / measured_peak


if __name__ == "__main__":
    main()
