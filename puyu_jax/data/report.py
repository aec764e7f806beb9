"""The run report: ``report.json`` (deterministic), ``report.md`` and ``report.png``
(drop reasons per stage; document length histograms before and after)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from puyu_jax.data.config import ProcessConfig

HIST_BINS = [0, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000, 10**9]


def _hist(lengths: list[int]) -> list[int]:
    return np.histogram(np.asarray(lengths, dtype=np.int64), bins=HIST_BINS)[0].tolist() if lengths else [0] * (len(HIST_BINS) - 1)


def build_report(cfg: ProcessConfig, files: list[Path], entries: list[dict], shards: list[dict],
                 line_stats: dict, digest: str) -> dict:
    """Counts of every record's fate: ``input_records == kept + dropped`` always holds
    (malformed records are dropped at stage ``read``)."""
    from puyu_jax.data.process import stage_order, summarize

    by = summarize(entries)
    kept = [e for e in entries if e["kind"] == "kept"]
    stages = {}
    remaining = len(entries)
    for s in stage_order(cfg):
        if s not in by and s not in cfg.stages and s not in ("read", "dedup"):
            continue
        n_drop = sum(by.get(s, Counter()).values())
        stages[s] = {"in": remaining, "dropped": n_drop, "reasons": dict(sorted(by.get(s, Counter()).items()))}
        remaining -= n_drop
    before = [e["in_len"] for e in entries if e["kind"] != "malformed"]
    after = [len(e["doc"]["text"]) for e in kept]
    langs = Counter(e["doc"].get("lang", "") for e in kept)
    pii = Counter()
    for e in kept:
        pii.update(e["doc"].get("pii", {}))
    n_drop = len(entries) - len(kept)
    return {
        "config_hash": digest,
        "inputs": [str(f) for f in files],
        "input_records": len(entries),
        "kept": len(kept),
        "dropped": n_drop,
        "malformed": dict(sorted(by.get("read", Counter()).items())),
        "stages": stages,
        "chars_before": int(sum(before)),
        "chars_after": int(sum(after)),
        "languages": dict(sorted(langs.items())),
        # files that broke mid-way: the records before the damage were read (and counted) as usual
        "damaged_inputs": [{"file": e["source"], "records_read": e["index"], "reason": e["reason"], "error": e["raw"]}
                           for e in entries if e["kind"] == "malformed"
                           and e["reason"] in ("damaged_file", "unreadable_file")],
        "pii_masked": dict(sorted(pii.items())),
        "line_dedup": line_stats,
        "length_hist": {"bins": HIST_BINS[:-1], "before": _hist(before), "after": _hist(after)},
        "output": {"shards": shards, "dropped": "dropped.jsonl.zst"},
    }


def write_report(report: dict, out: Path) -> None:
    """Write report.json, report.md and report.png into `out`."""
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    (out / "report.md").write_text(report_markdown(report))
    plot_report(report, out / "report.png")


def report_markdown(r: dict) -> str:
    """A human summary of the report."""
    pct = lambda a, b: f"{100 * a / b:.1f}%" if b else "-"
    lines = [
        "# Data processing report",
        "",
        f"config hash `{r['config_hash']}`; {len(r['inputs'])} input file(s)",
        "",
        f"- input records: **{r['input_records']}**",
        f"- kept: **{r['kept']}** ({pct(r['kept'], r['input_records'])})",
        f"- dropped: **{r['dropped']}** (malformed: {sum(r['malformed'].values())})",
        f"- characters: {r['chars_before']:,} before, {r['chars_after']:,} after",
        f"- languages kept: {', '.join(f'{k} {v}' for k, v in r['languages'].items()) or '-'}",
        f"- PII masked: {', '.join(f'{k} {v}' for k, v in r['pii_masked'].items()) or 'none'}",
        f"- boilerplate lines: {r['line_dedup']['boilerplate_lines']}, removed {r['line_dedup']['lines_removed']} times",
    ]
    for d in r.get("damaged_inputs", []):
        lines.append(f"- **damaged input** `{d['file']}`: {d['reason']} after {d['records_read']} record(s) "
                     f"({d['error']})")
    lines += [
        "",
        "## Drops by stage",
        "",
        "| stage | in | dropped | reasons |",
        "|---|---:|---:|---|",
    ]
    for s, v in r["stages"].items():
        reasons = ", ".join(f"{k} {n}" for k, n in v["reasons"].items()) or "-"
        lines.append(f"| {s} | {v['in']} | {v['dropped']} | {reasons} |")
    lines += ["", "## Length (characters)", "", "| from | before | after |", "|---:|---:|---:|"]
    h = r["length_hist"]
    for b, x, y in zip(h["bins"], h["before"], h["after"]):
        lines.append(f"| {b} | {x} | {y} |")
    lines += ["", "![report](report.png)", ""]
    return "\n".join(lines)


def plot_report(r: dict, path: Path) -> None:
    """Bar chart of drop reasons per stage and the before/after length histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, counts = [], []
    for s, v in r["stages"].items():
        for reason, n in v["reasons"].items():
            labels.append(f"{s}: {reason}")
            counts.append(n)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, max(3.5, 0.3 * len(labels) + 1.5)))
    if labels:
        a1.barh(range(len(labels)), counts, color="tab:red")
        a1.set_yticks(range(len(labels)), labels, fontsize=8)
        a1.invert_yaxis()
    a1.set_title(f"dropped {r['dropped']} of {r['input_records']} records")
    a1.set_xlabel("records")
    h = r["length_hist"]
    x = np.arange(len(h["bins"]))
    a2.bar(x - 0.2, h["before"], width=0.4, label="before")
    a2.bar(x + 0.2, h["after"], width=0.4, label="after (kept)")
    a2.set_xticks(x, [f"{b // 1000}k" if b >= 1000 else str(b) for b in h["bins"]], fontsize=8)
    a2.set_xlabel("document length (chars, bin start)")
    a2.set_ylabel("documents")
    a2.set_title("length histogram")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
