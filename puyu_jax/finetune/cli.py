"""`puyu finetune {train,check-data,preview,merge,export,estimate}`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
Examples:
  puyu finetune check-data tests/finetune/data/glaive_toolcall_en.json
  puyu finetune preview configs/finetune/smollm2-lora-identity.yaml
  puyu finetune train configs/finetune/smollm2-lora-identity.yaml steps=20 out_dir=runs/ft
  puyu finetune merge runs/ft runs/ft-merged --to hf
  puyu finetune export runs/ft runs/ft-peft --format peft
  puyu finetune estimate configs/finetune/internlm2-7b-qlora.yaml
"""


def _load(config: str, overrides=()):
    from puyu_jax.config import load_config
    from puyu_jax.finetune.config import FinetuneConfig

    return load_config(FinetuneConfig, config, list(overrides))


def _cmd_train(args) -> int:
    from puyu_jax.finetune.run import finetune
    from puyu_jax.train.distributed import maybe_initialize_distributed

    maybe_initialize_distributed()
    cfg = _load(args.config, args.overrides)
    s = finetune(cfg, resume=args.resume)
    d = s["data"]
    print(f"finished at step {s.get('step', s['start_step'])}: loss {s.get('loss', float('nan')):.4f}; "
          f"{d['samples']} samples in {d['sequences']} sequences ({d['bad_records']} bad records); "
          f"outputs in {cfg.train.out_dir}")
    return 0


def _tokenizer(source: str):
    """(tokenizer, the model config's chat template name) of a model or tokenizer source."""
    from puyu_jax.data.pack import resolve_tokenizer
    from puyu_jax.pretrained import load_model_config

    p = Path(source)
    tok = resolve_tokenizer(str(p / "tokenizer") if (p / "model.yaml").exists() else source)
    try:
        chat = load_model_config(source).chat_template
    except (FileNotFoundError, ValueError):
        chat = "plain"
    return tok, chat


def _cmd_check_data(args) -> int:
    from puyu_jax.finetune.formats import load_dataset
    from puyu_jax.finetune.sft import SFTStats, encode_samples, resolve_template

    res = load_dataset(args.file, args.format)
    for e in res.errors:
        print(f"record {e.index} [{e.format}]: {e.reason}")
    print(f"{args.file}: {res.n_records} records, {len(res.samples)} good, {len(res.errors)} bad; formats {res.formats}")
    bad = len(res.errors)
    if args.tokenizer and res.samples:
        tok, chat = _tokenizer(args.tokenizer)
        template = resolve_template(tok, chat, args.template)
        stats = SFTStats()
        encode_samples(tok, template, res.samples, args.seq_len, stats)
        for e in stats.errors:
            print(f"record {e.index} [{e.format}]: {e.reason}")
        print(f"tokenized with {args.tokenizer}: {stats.samples} usable, {stats.truncated} truncated at "
              f"seq_len={args.seq_len}, {stats.dropped} dropped; {stats.tokens} tokens, {stats.trained_tokens} trained")
        bad += stats.dropped
    return 1 if bad else 0


def _cmd_preview(args) -> int:
    import numpy as np
    from rich.console import Console

    from puyu_jax.finetune.formats import load_dataset
    from puyu_jax.finetune.sft import encode_sample, preview, resolve_template

    if args.source.endswith((".yaml", ".yml")):
        from puyu_jax.finetune.run import resolve_path

        cfg = _load(args.source, args.overrides)
        tok, chat = _tokenizer(cfg.data.tokenizer or cfg.model)
        path, fmt, name, seq = str(resolve_path(cfg.data.path)), cfg.data.format, cfg.data.template, cfg.data.seq_len
        res = load_dataset(path, fmt, system=cfg.data.system, substitutions=dict(cfg.data.substitutions))
    else:
        tok, chat = _tokenizer(args.tokenizer)
        path, name, seq = args.source, args.template, args.seq_len
        res = load_dataset(path, args.format)
    if not res.samples:
        print(f"{path}: no valid sample (run `puyu finetune check-data {path}`)", file=sys.stderr)
        return 1
    template = resolve_template(tok, chat, name)
    sample = res.samples[min(args.index, len(res.samples) - 1)]
    ids, mask = encode_sample(tok, template, sample)
    ids, mask = ids[:seq], mask[:seq]
    if args.plain:
        print(preview(tok, ids, mask))
    else:
        Console(highlight=False).print(preview(tok, ids, mask, markup=True))
    n = int(np.sum(mask[1:]))
    print(f"\n[record {sample.source}: {len(ids)} tokens, {n} trained (marked ⟦…⟧ / green)]", file=sys.stderr)
    return 0


def _cmd_merge(args) -> int:
    from puyu_jax.finetune.run import merge_run

    out = merge_run(args.run_dir, args.out, to=args.to, step=args.step)
    print(f"merged model written to {out} ({args.to})")
    return 0


def _cmd_export(args) -> int:
    if args.format == "peft":
        from puyu_jax.finetune.export import export_run_peft

        out = export_run_peft(args.run_dir, args.out, base=args.base, step=args.step)
        size = sum(p.stat().st_size for p in Path(out).iterdir())
        print(f"PEFT adapter written to {out} ({size / 1e6:.2f} MB)")
    else:
        from puyu_jax.finetune.run import merge_run

        out = merge_run(args.run_dir, args.out, to="hf", step=args.step)
        print(f"merged Hugging Face model written to {out}")
    return 0


def _cmd_estimate(args) -> int:
    from puyu_jax.finetune.estimate import estimate_memory, format_table
    from puyu_jax.pretrained import load_model_config

    cfg = _load(args.config, args.overrides)
    mc = load_model_config(cfg.model)
    for name in ("dtype", "param_dtype", "attention_impl"):
        if getattr(cfg, name):
            mc = mc.replace(**{name: getattr(cfg, name)})
    seq = args.seq_len or cfg.data.seq_len
    batch = args.batch or cfg.train.batch_size // cfg.train.grad_accum
    modes = args.modes.split(",")
    rows = {m: estimate_memory(mc, m, seq_len=seq, batch=batch, lora=cfg.lora, remat=cfg.train.remat,
                               parallel=cfg.train.parallel) for m in modes}
    print(f"{cfg.model}: seq {seq}, micro-batch {batch}, remat {cfg.train.remat}, dtype {mc.dtype}/{mc.param_dtype}, "
          f"attention {mc.attention_impl}, LoRA rank {cfg.lora.rank}")
    print(format_table(rows))
    return 0


def add_parser(subparsers) -> None:
    """Adds `finetune` and its subcommands to the `puyu` parser."""
    ft = subparsers.add_parser(
        "finetune", help="SFT / LoRA / QLoRA finetuning (XTuner on JAX): train, check data, merge, export",
        description="Chat-format SFT with assistant-only loss and packing; full, LoRA and QLoRA (NF4).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ft.add_subparsers(dest="finetune_command", metavar="SUBCOMMAND", required=True)

    tr = sub.add_parser("train", help="finetune from a FinetuneConfig YAML")
    tr.add_argument("config", help="FinetuneConfig YAML (configs/finetune/)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. mode=qlora lora.rank=16 steps=100")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    tr.set_defaults(fn=_cmd_train)

    cd = sub.add_parser("check-data", help="validate a dataset; print what is wrong with each bad record")
    cd.add_argument("file", help=".json / .jsonl / .txt dataset")
    cd.add_argument("--format", default="auto", help="auto, alpaca, sharegpt, openai, moss, oasst, text")
    cd.add_argument("--tokenizer", help="also tokenize with this model / tokenizer source (e.g. smollm2)")
    cd.add_argument("--template", default="", help="chat template name (default: the tokenizer's)")
    cd.add_argument("--seq-len", type=int, default=2048, help="max tokens per example")
    cd.set_defaults(fn=_cmd_check_data)

    pv = sub.add_parser("preview", help="print a tokenized sample with the trained spans marked")
    pv.add_argument("source", help="a FinetuneConfig YAML or a dataset file")
    pv.add_argument("overrides", nargs="*", help="config overrides (with a YAML)")
    pv.add_argument("-i", "--index", type=int, default=0, help="which valid sample")
    pv.add_argument("--tokenizer", default="smollm2", help="tokenizer / model source (with a dataset file)")
    pv.add_argument("--template", default="", help="chat template name (with a dataset file)")
    pv.add_argument("--format", default="auto", help="dataset format (with a dataset file)")
    pv.add_argument("--seq-len", type=int, default=2048)
    pv.add_argument("--plain", action="store_true", help="mark trained spans with ⟦…⟧ instead of colour")
    pv.set_defaults(fn=_cmd_preview)

    mg = sub.add_parser("merge", help="fold LoRA into the base and save the full model")
    mg.add_argument("run_dir", help="a finetune run directory")
    mg.add_argument("out", help="output directory")
    mg.add_argument("--to", choices=("puyu", "hf"), default="puyu", help="puyu checkpoint or HF safetensors")
    mg.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    mg.set_defaults(fn=_cmd_merge)

    ex = sub.add_parser("export", help="export the adapter (PEFT) or the merged model (HF safetensors)")
    ex.add_argument("run_dir", help="a finetune run directory")
    ex.add_argument("out", help="output directory")
    ex.add_argument("--format", choices=("peft", "hf"), default="peft")
    ex.add_argument("--base", default="", help="base_model_name_or_path for adapter_config.json")
    ex.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    ex.set_defaults(fn=_cmd_export)

    es = sub.add_parser("estimate", help="per-device memory for full / LoRA / QLoRA at a sequence length")
    es.add_argument("config", help="FinetuneConfig YAML")
    es.add_argument("overrides", nargs="*", help="key=value overrides")
    es.add_argument("--seq-len", type=int, help="default: data.seq_len")
    es.add_argument("--batch", type=int, help="micro-batch (default: batch_size / grad_accum)")
    es.add_argument("--modes", default="full,lora,qlora")
    es.set_defaults(fn=_cmd_estimate)
