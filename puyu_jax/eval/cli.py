"""`puyu eval`: a run from an EvalConfig YAML, or straight from flags as lm-eval is driven:

    puyu eval --model smollm2 --datasets arc-e,piqa --limit 20 --num-fewshot 0 --batch-size 16
    puyu eval --model http://127.0.0.1:23333/v1 --datasets gsm8k
    puyu eval --model gold --datasets ceval,bbh        # the check backends: 100% ...
    puyu eval --model constant --datasets ceval,bbh    # ... and chance
    puyu eval configs/eval/origin-table.yaml [key=value ...] [--reuse [DIR]] [--dry-run] [--runner slurm] [-j N]
"""

from __future__ import annotations

import sys
from pathlib import Path


def model_entry(model: str, batch_size: int | None = None) -> dict:
    """A ModelSpec mapping for `--model`: an http(s) URL (an OpenAI-compatible server), `gold`,
    `constant` / `constant:TEXT` (the check backends), or a local model source."""
    if model.startswith(("http://", "https://")):
        entry = {"abbr": "server", "type": "openai", "url": model}
    elif model == "gold":
        entry = {"abbr": "gold", "type": "gold", "path": ""}
    elif model == "constant" or model.startswith("constant:"):
        entry = {"abbr": "constant", "type": "constant", "path": model.partition(":")[2] or "A"}
    else:
        entry = {"abbr": Path(model.rstrip("/")).name or model, "type": "local", "path": model}
    if batch_size is not None:
        entry["batch_size"] = batch_size
    return entry


def build_config(args):
    """The EvalConfig of a command line: the YAML (if any), then the flags, then key=value overrides."""
    from puyu_jax.config import ConfigError, load_config
    from puyu_jax.eval.config import EvalConfig

    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)  # `puyu eval --model m key=value`: no YAML given
        args.config = None
    if not args.config and not args.model:
        raise ConfigError("give an EvalConfig YAML or --model (e.g. puyu eval --model smollm2 --datasets arc-e)")
    base = load_config(EvalConfig, args.config) if args.config else load_config(
        EvalConfig, {"out_dir": "outputs/eval/cli", "datasets": ["arc-e"]})
    flags: list[tuple[str, object]] = []
    if args.model:
        flags.append(("models", [model_entry(m, args.batch_size) for m in args.model.split(",")]))
    elif args.batch_size is not None:
        flags.append(("models", [{**m, "batch_size": args.batch_size} for m in base.models]))
    if args.datasets:
        flags.append(("datasets", [d.strip() for d in args.datasets.split(",") if d.strip()]))
    extra = list(base.dataset_overrides)
    if args.limit is not None:
        extra.append(f"max_samples={args.limit}")
    if args.num_fewshot is not None:
        extra.append(f"prompt.few_shot.ids=[{','.join(str(i) for i in range(args.num_fewshot))}]")
    if extra != list(base.dataset_overrides):
        flags.append(("dataset_overrides", extra))
    if args.data_root:
        flags.append(("data_root", args.data_root))
    if args.out_dir:
        flags.append(("out_dir", args.out_dir))
    return load_config(EvalConfig, base, [*flags, *args.overrides])


def _cmd_eval(args) -> int:
    from puyu_jax.eval.runner import run_eval

    cfg = build_config(args)
    out = run_eval(cfg, reuse=args.reuse or False, runner=args.runner, jobs=args.jobs, dry_run=args.dry_run,
                   progress=not args.quiet)
    if args.dry_run:
        return 0
    print(open(out["summary"]["md"], encoding="utf-8").read(), end="")
    print(f"outputs in {out['work_dir']}", file=sys.stderr)
    return 0


def add_parser(subparsers) -> None:
    """Adds the `eval` command to the main `puyu` parser's subparsers."""
    p = subparsers.add_parser(
        "eval", help="evaluate models on datasets (OpenCompass-style: PPL / gen, judges, partitioned runs)",
        description="Runs every model on every dataset, caching each sample's prediction, then writes results/ "
                    "and summary/ tables and charts. Give an EvalConfig YAML (see configs/eval/), or --model and "
                    "--datasets (names under configs/eval/datasets/, or dataset YAML paths); flags override the YAML. "
                    "Every dataset is read and its first prompts rendered before a model loads; a bad file, line, "
                    "column or template field is one line on stderr and exit status 2.",
        epilog="Examples: puyu eval --model smollm2 --datasets arc-e,piqa --limit 20; "
               "puyu eval --model http://127.0.0.1:23333/v1 --datasets gsm8k --limit 50; "
               "puyu eval --model gold --datasets ceval,bbh; "
               "puyu eval configs/eval/origin-table.yaml data_root=../shared/data/eval; "
               "puyu eval configs/eval/smollm2-subsets.yaml --runner slurm --dry-run. See docs/eval.md.",
    )
    p.add_argument("config", nargs="?", default=None, help="an EvalConfig YAML (optional with --model)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dataset_overrides=[max_samples=20]")
    p.add_argument("--model", help="MODEL_OR_URL[,...]: a local source (smollm2, a checkpoint dir), an OpenAI-"
                                   "compatible URL, or a check backend: gold, constant[:TEXT]")
    p.add_argument("--datasets", help="comma-separated dataset names or YAML paths, e.g. arc-e,piqa,ceval")
    p.add_argument("--limit", type=int, help="the first N samples of each dataset")
    p.add_argument("--num-fewshot", type=int, help="K in-context examples (dev rows 0..K-1) for every dataset")
    p.add_argument("--batch-size", type=int, help="the model's batch size")
    p.add_argument("--data-root", help="a directory laid out like shared/data/eval: full sets, not the subsets")
    p.add_argument("--out-dir", help="where runs go (default: the config's out_dir, outputs/eval/cli without one)")
    p.add_argument("-r", "--reuse", nargs="?", const=True, default=False, metavar="DIR",
                   help="reuse the latest run directory (or DIR under out_dir): finished tasks are skipped")
    p.add_argument("--dry-run", action="store_true", help="print the worker commands / sbatch scripts only")
    p.add_argument("--runner", choices=("local", "slurm"), default="local")
    p.add_argument("-j", "--jobs", type=int, default=1, help="tasks in parallel (worker processes or SLURM jobs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_eval)
