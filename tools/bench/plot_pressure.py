"""Per-request time to first byte and first token of `serve.py --pressure` runs, side by side.

    python tools/bench/plot_pressure.py before=runs/pressure-before after=runs/pressure-after2 \
        --out docs/serve-pressure.png

Each LABEL=DIR names a `serve.py` output folder (its serve.json); the plot shows, for each run,
the sorted TTFB and TTFT of every request of its one setting (an empirical CDF) and prints the
percentiles the docs quote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import percentile  # noqa: E402


def load(folder: str) -> dict[str, list[float]]:
    data = json.loads((Path(folder) / "serve.json").read_text())
    (entry,) = data["servers"].values()
    (reqs,) = entry["requests"].values()
    return {k: sorted(r[k] for r in reqs if r[k] is not None) for k in ("ttfb", "ttft")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=DIR")
    p.add_argument("--out", default="runs/serve-pressure.png")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for spec in args.runs:
        label, folder = spec.split("=", 1)
        d = load(folder)
        for ax, key in zip(axes, ("ttfb", "ttft")):
            xs = d[key]
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label)
            print(f"{label} {key}: p50 {percentile(xs, 50):.2f} s, p99 {percentile(xs, 99):.2f} s, n={len(xs)}")
    for ax, title in zip(axes, ("time to first byte (headers)", "time to first token")):
        ax.set_title(title)
        ax.set_xlabel("seconds after the request was sent")
        ax.set_ylabel("fraction of the 64 requests")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_xscale("log")
    fig.suptitle("puyu serve, 64 streamed requests sent at once to a fresh server (SmolLM2-135M, 2-core CPU)")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
