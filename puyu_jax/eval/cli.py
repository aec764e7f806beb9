"""`puyu eval CONFIG [key=value ...] [--reuse [DIR]] [--dry-run] [--runner local|slurm] [-j N]`."""

from __future__ import annotations

import sys


def _cmd_eval(args) -> int:
    from puyu_jax.config import load_config
    from puyu_jax.eval.config import EvalConfig
    from puyu_jax.eval.runner import run_eval

    cfg = load_config(EvalConfig, args.config, args.overrides)
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
        description="Runs every model of CONFIG (an EvalConfig YAML, see configs/eval/) on every dataset, "
                    "caching each sample's prediction, then writes results/ and summary/ tables and charts.",
        epilog="Examples: puyu eval configs/eval/smollm2-subsets.yaml; "
               "puyu eval configs/eval/smollm2-subsets.yaml data_root=../shared/data/eval shard_size=500 -j 2; "
               "puyu eval configs/eval/smollm2-subsets.yaml --runner slurm --dry-run",
    )
    p.add_argument("config", help="an EvalConfig YAML")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. dataset_overrides=[max_samples=20]")
    p.add_argument("-r", "--reuse", nargs="?", const=True, default=False, metavar="DIR",
                   help="reuse the latest run directory (or DIR under out_dir): finished tasks are skipped")
    p.add_argument("--dry-run", action="store_true", help="print the worker commands / sbatch scripts only")
    p.add_argument("--runner", choices=("local", "slurm"), default="local")
    p.add_argument("-j", "--jobs", type=int, default=1, help="tasks in parallel (worker processes or SLURM jobs)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_eval)
