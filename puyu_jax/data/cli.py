"""`puyu data ...`: corpus processing, tokenize + pack, report viewing.

    puyu data process CONFIG [key=value ...]    clean, filter, dedup; shards + report
    puyu data tokenize CONFIG [key=value ...]   documents -> packed array_record shards
    puyu data report DIR                        print a process run's report.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROCESS_EPILOG = """\
CONFIG is a ProcessConfig YAML (see configs/data/process.yaml) or a name in
configs/data/. Any field can be overridden as key=value right after CONFIG, e.g.
  puyu data process configs/data/process.yaml input.paths=[corpus/*.jsonl.zst] output.dir=runs/clean
  puyu data process process num_workers=8 dedup.threshold=0.8 langid.keep=[en,zh,de]
  puyu data process process engine=dask dask_address=tcp://scheduler:8786
Outputs in output.dir: part-*-of-*.jsonl.zst (or .parquet) kept documents,
dropped.jsonl.zst (every dropped or malformed record with its stage and reason),
report.json, report.md, report.png, timing.json, config.yaml, config.hash.
"""

TOKENIZE_EPILOG = """\
CONFIG is a TokenizeConfig YAML (see configs/data/tokenize.yaml). Example:
  puyu data tokenize configs/data/tokenize.yaml inputs=[runs/clean] seq_len=1024 out_dir=runs/packed
Writes packed-NNNNN-of-NNNNN.array_record shards (records: int32 [3, seq_len] =
tokens, segment_ids, positions) and index.json; load them with
puyu_jax.data.make_loader(out_dir, ...) or tfds.data_source via puyu_jax.data.tfds_builder.
"""


def _config_path(name: str) -> str:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return name
    from puyu_jax.config import configs_dir

    return str(configs_dir() / "data" / f"{name}.yaml")


def _cmd_process(args) -> int:
    from puyu_jax.config import load_config
    from puyu_jax.data.config import ProcessConfig
    from puyu_jax.data.process import run_process

    overrides = list(args.overrides)
    if args.workers is not None:
        overrides.append(f"num_workers={args.workers}")
    if args.out:
        overrides.append(f"output.dir={args.out}")
    if args.no_progress:
        overrides.append("progress=false")
    cfg = load_config(ProcessConfig, _config_path(args.config), overrides)
    r = run_process(cfg)
    t = r["timing"]
    print(
        f"kept {r['kept']} of {r['input_records']} records ({r['dropped']} dropped, "
        f"{sum(r['malformed'].values())} malformed) in {t['seconds']:.1f} s "
        f"({t['docs_per_s']:.0f} docs/s, {t['mb_per_s']:.2f} MB/s); report: {cfg.output.dir}/report.md"
    )
    for d in r["damaged_inputs"]:
        print(f"warning: damaged input {d['file']}: {d['reason']} after {d['records_read']} record(s) ({d['error']})",
              file=sys.stderr)
    return 0


def _cmd_tokenize(args) -> int:
    from puyu_jax.config import load_config
    from puyu_jax.data.config import TokenizeConfig
    from puyu_jax.data.pack import run_tokenize

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    cfg = load_config(TokenizeConfig, _config_path(args.config), overrides)
    index = run_tokenize(cfg)
    print(
        f"packed {index['num_documents']} documents, {index['num_tokens']} tokens into "
        f"{index['num_sequences']} sequences of {index['seq_len']} in {len(index['shards'])} shard(s): {cfg.out_dir}"
    )
    return 0


def _cmd_report(args) -> int:
    d = Path(args.dir)
    if args.json:
        print(json.dumps(json.loads((d / "report.json").read_text()), indent=1, ensure_ascii=False))
    else:
        sys.stdout.write((d / "report.md").read_text())
    return 0


def add_parser(subparsers) -> None:
    """Add the `data` command (process, tokenize, report) to a `puyu` subparsers object."""
    data = subparsers.add_parser(
        "data",
        help="corpus processing (clean, filter, dedup), tokenize + pack, reports",
        description="书生·万卷-style corpus processing and packing into training shards.",
    )
    dsub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    p = dsub.add_parser(
        "process",
        help="extract, normalize, language-id, rule and model filters, dedup, PII masking",
        description="Run the configured document stages over jsonl(.gz/.zst), parquet, text and HTML "
        "inputs, then exact / MinHash near-dup / line-level dedup. Every input record ends kept or "
        "dropped with its stage and reason; malformed lines are counted, never fatal.",
        epilog=PROCESS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="ProcessConfig YAML path, or a name in configs/data/")
    p.add_argument("-j", "--workers", type=int, help="worker processes (default: all cores; 1 = in-process)")
    p.add_argument("-o", "--out", help="output directory (output.dir)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(fn=_cmd_process)

    t = dsub.add_parser(
        "tokenize",
        help="tokenize documents and pack them into fixed-length array_record sequences",
        description="Tokenize processed documents, append eos to each, and pack them greedily into "
        "sequences of seq_len with segment ids and per-document positions.",
        epilog=TOKENIZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("config", help="TokenizeConfig YAML path, or a name in configs/data/")
    t.add_argument("-o", "--out", help="output directory (out_dir)")
    t.add_argument("overrides", nargs="*", help="key=value config overrides")
    t.set_defaults(fn=_cmd_tokenize)

    r = dsub.add_parser("report", help="print the report of a `data process` run",
                        description="Print report.md (or report.json with --json) of a process output directory.")
    r.add_argument("dir", help="the output directory of `puyu data process`")
    r.add_argument("--json", action="store_true", help="print report.json instead")
    r.set_defaults(fn=_cmd_report)
