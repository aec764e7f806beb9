"""`puyu quantize {int4,ppl}`: int4 weight-only quantization and perplexity."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

EPILOG = """\
Examples:
  puyu quantize int4 smollm2 out/smollm2-awq                 AWQ, groups of 128, shipped C4 calibration
  puyu quantize int4 smollm2 out/smollm2-rtn --method rtn
  puyu quantize int4 smollm2 out/smollm2-gptq --method gptq --group-size 32    GPTQ (--act-order, --kind min|sym)
  puyu quantize int8 smollm2 out/smollm2-int8               int8 weight-only, one scale per output channel
  puyu quantize w8a8 smollm2 out/smollm2-w8a8               SmoothQuant W8A8 (int8 weights and activations)
  puyu quantize ppl smollm2                                  fp perplexity on the shipped held-out wiki text
  puyu quantize ppl out/smollm2-awq                          a quantized directory loads like any model
  puyu quantize ppl smollm2 --quant int4 --method awq        quantize in memory, then score
  puyu quantize ppl smollm2 --kv int8                        score through the serving engine's int8 paged KV
  puyu quantize ppl smollm2 --quant native                   the GGUF's own Q4_1 / Q8_0 blocks, not dequantized

A quantized directory (quant.yaml + model.safetensors + tokenizer/) is a MODEL source for
every command (`puyu generate out/smollm2-awq -p ...`).
"""


def _common_quant_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", choices=("awq", "gptq", "rtn"), default="awq",
                   help="awq: activation-aware scales + clipping, then round-to-nearest; gptq: error-compensating "
                        "rounding against the calibration Hessians; rtn: round-to-nearest only")
    p.add_argument("--kind", choices=("zero", "min", "sym"), default="zero",
                   help="int4 group kind: zero (integer zero points, default), min (float minimums, as GGUF Q4_1) "
                        "or sym (symmetric, as GGUF Q4_0)")
    p.add_argument("--act-order", action="store_true",
                   help="GPTQ: quantize input channels by decreasing Hessian diagonal (groups fixed beforehand)")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ dampening, fraction of the mean Hessian diagonal")
    p.add_argument("--group-size", type=int, default=128, help="rows of K per int4 group (default 128)")
    p.add_argument("--calib", help="AWQ / GPTQ / SmoothQuant calibration text: .jsonl with a 'text' field, or plain text "
                                    "(default: the shipped C4 slice)")
    p.add_argument("--calib-samples", type=int, default=16, help="calibration windows (default 16)")
    p.add_argument("--calib-seq-len", type=int, default=512, help="tokens per calibration window (default 512)")
    p.add_argument("--search-tokens", type=int, default=2048,
                   help="calibration tokens on which each AWQ scale candidate is scored (default 2048; 0 = all)")
    p.add_argument("--no-clip", action="store_true", help="AWQ without the weight clipping search")
    p.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant migration strength (w8a8; default 0.5)")


def _quantize(pre, args, log, bits: int = 4):
    from puyu_jax.quant.awq import AWQConfig, calibration_tokens, read_texts
    from puyu_jax.quant.gptq import GPTQConfig
    from puyu_jax.quant.model import quantize_model

    calib, extra = None, {}
    if getattr(args, "w8a8", False):
        if pre.tokenizer is None:
            raise FileNotFoundError("SmoothQuant calibration needs a tokenizer: the model source has none")
        texts = read_texts(args.calib) if args.calib else None
        calib = calibration_tokens(pre.tokenizer, texts, args.calib_samples, args.calib_seq_len)
        t0 = time.time()
        q = quantize_model(pre.model, "smoothquant", calib_tokens=calib, awq_config={"alpha": args.alpha})
        log(f"quantized (W8A8 SmoothQuant, alpha {args.alpha}, {calib.shape[0]} x {calib.shape[1]} calibration "
            f"tokens) in {time.time() - t0:.1f} s")
        return q, {"calib": str(args.calib or "shipped C4 slice"), "calib_tokens": int(calib.size),
                   "alpha": args.alpha}
    if bits == 8:
        t0 = time.time()
        q = quantize_model(pre.model, "rtn", args.group_size, bits=8)
        log(f"quantized (int8 rtn, {'per channel' if not args.group_size else f'g{args.group_size}'}) "
            f"in {time.time() - t0:.1f} s")
        return q, extra
    if args.method in ("awq", "gptq"):
        if pre.tokenizer is None:
            raise FileNotFoundError(f"{args.method.upper()} calibration needs a tokenizer: the model source has none")
        texts = read_texts(args.calib) if args.calib else None
        calib = calibration_tokens(pre.tokenizer, texts, args.calib_samples, args.calib_seq_len)
        extra = {"calib": str(args.calib or "shipped C4 slice (puyu_jax/quant/assets/calib_c4.jsonl)"),
                 "calib_tokens": int(calib.size)}
        if args.method == "awq":
            extra.update(search_tokens=args.search_tokens, clip=not args.no_clip)
        else:
            extra.update(act_order=args.act_order, damp=args.damp)
        log(f"{args.method.upper()} calibration: {calib.shape[0]} windows x {calib.shape[1]} tokens")
    extra["kind"] = args.kind
    t0 = time.time()
    report: dict = {}
    q = quantize_model(pre.model, args.method, args.group_size, calib,
                       awq_config=AWQConfig(clip=not args.no_clip, search_tokens=args.search_tokens), report=report,
                       kind=args.kind, gptq_config=GPTQConfig(damp=args.damp, act_order=args.act_order))
    if args.method == "gptq":
        for row in report["layers"]:
            log(f"  layer {row['layer']:3d}: " + ", ".join(f"{g} err {v['err']:.3g}" for g, v in row.items()
                                                          if g != "layer"))
    if args.method == "awq":
        for row in report["layers"]:
            parts = [f"{g} a={row[g]['alpha']}" for g in ("qkv", "o", "gate_up", "down") if g in row]
            log(f"  layer {row['layer']:3d}: " + ", ".join(parts))
    log(f"quantized ({args.method}, g{args.group_size}, {args.kind}) in {time.time() - t0:.1f} s")
    return q, extra


def _cmd_int4(args) -> int:
    from puyu_jax.pretrained import load_pretrained
    from puyu_jax.quant.model import save_quantized, weight_nbytes

    def log(s):
        print(s, file=sys.stderr)

    pre = load_pretrained(args.model)
    bits = getattr(args, "bits", 4)
    method = "smoothquant" if getattr(args, "w8a8", False) else "rtn" if bits == 8 else args.method
    q, extra = _quantize(pre, args, log, bits)
    save_quantized(q, args.out, tokenizer=pre.tokenizer, method=method,
                   extra={"source": str(args.model), **extra})
    sizes = weight_nbytes(q)
    print(f"wrote int{bits} {method} model to {args.out}: {sizes['quantized'] / 2**20:.1f} MiB int{bits} kernels "
          f"+ {sizes['float'] / 2**20:.1f} MiB float parameters")
    return 0


def _cmd_ppl(args) -> int:
    from puyu_jax.pretrained import load_pretrained
    from puyu_jax.quant.model import is_quantized
    from puyu_jax.quant.perplexity import heldout_text, perplexity, text_token_ids

    def log(s):
        print(s, file=sys.stderr)

    if args.quant == "native":
        from puyu_jax.quant.gguf import load_native

        pre = load_native(args.model)
    else:
        pre = load_pretrained(args.model)
    tokenizer = pre.tokenizer
    if args.tokenizer:
        from puyu_jax.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    if tokenizer is None:
        raise FileNotFoundError(f"{args.model} has no tokenizer: pass --tokenizer")
    model = pre.model
    label = "native GGUF blocks" if args.quant == "native" else "int4" if is_quantized(model) else pre.cfg.param_dtype
    args.w8a8 = args.quant == "w8a8"
    if args.w8a8:
        if is_quantized(model):
            raise ValueError(f"{args.model} is already quantized; drop --quant")
        model, _ = _quantize(pre, args, log, 8)
        label = f"w8a8 smoothquant alpha {args.alpha}"
    elif args.quant in ("int4", "int8"):
        if is_quantized(model):
            raise ValueError(f"{args.model} is already quantized; drop --quant")
        bits = int(args.quant[3:])
        model, _ = _quantize(pre, args, log, bits)
        if bits == 4:
            label = f"int4 {args.method} g{args.group_size}" + (f" {args.kind}" if args.kind != "zero" else "")
            label += " act-order" if args.method == "gptq" and args.act_order else ""
        else:
            label = f"int8 rtn {'per channel' if not args.group_size else f'g{args.group_size}'}"
    kv = None if args.kv == "none" else args.kv
    label += f", kv {args.kv}" if kv else ""
    results = []
    for name in args.text or [None]:
        text = Path(name).read_text(encoding="utf-8") if name else heldout_text()
        ids = text_token_ids(tokenizer, text)
        t0 = time.time()
        r = perplexity(model, ids, seq_len=args.seq_len, batch_size=args.batch_size,
                       max_windows=args.max_windows, kv=kv, progress=not args.quiet)
        shown = name or "heldout_wiki.txt"
        print(f"{args.model} [{label}] {shown}: perplexity {r.ppl:.3f} (nll {r.nll:.4f}) over {r.tokens} tokens in "
              f"{r.windows} windows of {r.seq_len}; {time.time() - t0:.1f} s")
        results.append({"text": shown, **r.as_dict()})
    if args.json:
        out = {"model": str(args.model), "label": label, **results[0]}
        if len(results) > 1:
            out["results"] = results
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quantize",
        help="int4 weight-only quantization (AWQ, GPTQ, RTN), int8, W8A8 and perplexity",
        description="Quantize a model's projections to int4 (groups along K, asymmetric, with zero points) "
                    "and measure perplexity of float, int4 and int8-KV models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    qsub = p.add_subparsers(dest="quantize_command", metavar="SUBCOMMAND", required=True)

    q = qsub.add_parser("int4", help="quantize MODEL to int4 and write a quantized directory OUT",
                        description="Quantize every q/k/v/o/gate/up/down projection to int4; embeddings, norms and "
                                    "lm_head stay float. Writes quant.yaml, model.safetensors and the tokenizer.")
    q.add_argument("model", help="model source (see `puyu --help`)")
    q.add_argument("out", help="output directory")
    _common_quant_args(q)
    q.set_defaults(fn=_cmd_int4)

    q8 = qsub.add_parser("int8", help="quantize MODEL to int8 weight-only (W8A16) and write a quantized directory OUT",
                         description="Round every q/k/v/o/gate/up/down projection to symmetric int8 (per output "
                                     "channel, or groups of --group-size along K).")
    q8.add_argument("model", help="model source (see `puyu --help`)")
    q8.add_argument("out", help="output directory")
    q8.add_argument("--group-size", type=int, default=0, help="rows of K per scale (default 0: per output channel)")
    q8.set_defaults(fn=_cmd_int4, bits=8, method="rtn")

    w8 = qsub.add_parser("w8a8", help="SmoothQuant MODEL to W8A8 (int8 weights and per-token int8 activations)",
                         description="Fold SmoothQuant factors (max|X|^alpha / max|W|^(1-alpha), from calibration "
                                     "text) into the norms / up_proj, then round the projections to per-channel "
                                     "int8; activations are quantized per token at run time.")
    w8.add_argument("model", help="model source (see `puyu --help`)")
    w8.add_argument("out", help="output directory")
    _common_quant_args(w8)
    w8.set_defaults(fn=_cmd_int4, bits=8, w8a8=True)

    pp = qsub.add_parser("ppl", help="perplexity of MODEL on held-out text",
                         description="Perplexity over non-overlapping windows of --seq-len tokens of --text "
                                     "(default: the shipped held-out Wikipedia slice).")
    pp.add_argument("model", help="model source, a quantized directory included")
    pp.add_argument("--quant", choices=("none", "int4", "int8", "w8a8", "native"), default="none",
                    help="int4 / int8: quantize the (float) model in memory first, with --method / --group-size "
                         "(int8: round-to-nearest, --group-size 0 = per channel); "
                         "native: a GGUF's Q4_0 / Q4_1 / Q8_0 tensors as they are")
    _common_quant_args(pp)
    pp.add_argument("--kv", choices=("none", "auto", "int8", "int4"), default="none",
                    help="score through the serving engine's paged KV cache in this dtype (default: plain forward)")
    pp.add_argument("--text", action="append",
                    help="a UTF-8 text file to score (repeat for several texts, each scored by the same model)")
    pp.add_argument("--tokenizer", help="tokenizer source when the model has none")
    pp.add_argument("--seq-len", type=int, default=512, help="window length (default 512)")
    pp.add_argument("--batch-size", type=int, default=4, help="windows per forward (default 4)")
    pp.add_argument("--max-windows", type=int, help="score only the first N windows")
    pp.add_argument("--json", help="also write the result to this JSON file")
    pp.add_argument("--quiet", action="store_true", help="no progress bar")
    pp.set_defaults(fn=_cmd_ppl)
