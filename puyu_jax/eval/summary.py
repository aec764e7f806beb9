"""Summaries across models: markdown, CSV and HTML tables and one bar chart per capability.

Rows are datasets grouped by capability (学科 / 语言 / 知识 / 理解 / 推理 / 代码 / 指令, then 主观, or
the blocks an EvalConfig's `summary_groups` lists, e.g. the origin documents' table), each
group followed by its naive average over its datasets, as OpenCompass' summarizer does.
"""

from __future__ import annotations

import csv
import html
from pathlib import Path

from puyu_jax.eval.config import GROUPS

GROUP_EN = {"学科": "Examination", "语言": "Language", "知识": "Knowledge", "理解": "Understanding",
            "推理": "Reasoning", "代码": "Code", "指令": "Instruction-following", "主观": "Subjective", "": "Other",
            "综合考试": "Examination", "知识问答": "Knowledge-QA", "阅读理解": "Reading-comprehension",
            "编程": "Coding"}


def layout(results: dict[str, dict[str, dict]], groups=None) -> list[tuple[str, list[str]]]:
    """[(group, [dataset label, ...])] in table order: the given groups ({name: [dataset, ...]},
    datasets named by label or dataset name, those without results left out), else by each
    dataset's own group; datasets no group lists come last, under their own group."""
    datasets: dict[str, dict] = {}
    for per in results.values():
        for label, r in per.items():
            datasets.setdefault(label, r)
    by_name = {r["dataset"]: lab for lab, r in datasets.items()}
    out, placed = [], set()
    for name, members in dict(groups or {}).items():
        labels = [lab for lab in (by_name.get(d, d) for d in members) if lab in datasets]
        if labels:
            out.append((name, labels))
            placed.update(labels)
    for g in GROUPS:
        labels = [lab for lab, r in datasets.items() if r["group"] == g and lab not in placed]
        if labels:
            out.append((g, labels))
    return out


def group_scores(results: dict[str, dict[str, dict]], groups=None) -> dict[str, dict[str, float]]:
    """{group: {model: naive average of that model's dataset scores in the group}}."""
    out: dict[str, dict[str, float]] = {}
    for g, labels in layout(results, groups):
        for model, per in results.items():
            xs = [per[lab]["score"] for lab in labels if lab in per]
            if xs:
                out.setdefault(g, {})[model] = sum(xs) / len(xs)
    return out


def table_rows(results: dict[str, dict[str, dict]], groups=None) -> tuple[list[str], list[list[str]]]:
    """Header and rows: dataset, capability, metric, one score column per model."""
    models = list(results)
    datasets: dict[str, dict] = {}
    for per in results.values():
        for label, r in per.items():
            datasets.setdefault(label, r)
    header = ["dataset", "capability", "metric", *models]
    rows = []
    gs = group_scores(results, groups)
    for g, members in layout(results, groups):
        for lab in members:
            r = datasets[lab]
            rows.append([lab, g or "-", r["metric"], *[_fmt(results[m].get(lab, {}).get("score")) for m in models]])
        if len(members) > 1 or g:
            rows.append([f"{g or 'other'} average", g or "-", "naive_average", *[_fmt(gs[g].get(m)) for m in models]])
    return header, rows


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def write_summary(results: dict[str, dict[str, dict]], out_dir: str | Path, groups=None) -> dict[str, str]:
    """Writes summary.md / .csv / .html and `<Capability>.png` charts; returns their paths.

    `groups`: {capability: [dataset, ...]} blocks fixing the rows' order and grouping."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows(results, groups)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    (out / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    (out / "summary.html").write_text(
        f"<!doctype html><meta charset='utf-8'><title>puyu eval summary</title>"
        f"<table border='1' cellpadding='4'><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>\n",
        encoding="utf-8")
    paths = {"md": str(out / "summary.md"), "csv": str(out / "summary.csv"), "html": str(out / "summary.html")}
    paths.update(_plots(results, out, groups))
    return paths


def _plots(results: dict[str, dict[str, dict]], out: Path, groups=None) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    datasets: dict[str, dict] = {}
    for per in results.values():
        for label, r in per.items():
            datasets.setdefault(label, r)
    paths = {}
    gs = group_scores(results, groups)
    for g, members in layout(results, groups):
        labels = members + (["average"] if len(members) > 1 else [])
        fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(labels) * max(1, len(models)) ** 0.5, 3.6))
        width = 0.8 / max(1, len(models))
        for k, m in enumerate(models):
            vals = [results[m].get(lab, {}).get("score", 0.0) for lab in members]
            if len(members) > 1:
                vals.append(gs[g].get(m, 0.0))
            xs = [i + (k - (len(models) - 1) / 2) * width for i in range(len(labels))]
            bars = ax.bar(xs, vals, width, label=m)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(labels)), labels)
        metric = datasets[members[0]]["metric"]
        ax.set_ylabel("rating (1-10)" if metric.startswith("rating") else "score (%)")
        name = GROUP_EN.get(g) or "".join(c if c.isalnum() else "-" for c in g)
        ax.set_title(name)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths[name] = str(path)
    return paths
