"""Evaluation scoring throughput: the local backend on the serving engine against a plain dense
scorer, on ARC-Easy and PIQA with SmolLM2-135M-Instruct.

Both run through the evaluation harness exactly as `puyu eval` does (`infer`: requests in
chunks of 64, no prediction cache), on the same items and the same tokenization:
  * engine: `LocalBackend` (puyu_jax/eval/backends/local.py): scoring requests scheduled as
    prefill work by `LLMEngine`, with the prefix cache computing each question once;
  * dense: `tests/oracle.py::dense_loglikelihood`, the test oracle: right-padded, length-sorted
    batches of 8 rows through one plain forward each.
A short warm-up (compilation) runs first on each, timed apart. Reported: items/s, the speed-up,
accuracy of each, and the largest per-option log-prob difference (the two must agree to 1e-4).

    python tools/bench/eval.py                          # 300 items each from ../shared/data/eval
    python tools/bench/eval.py --samples 40 --datasets arc-e   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA_ROOTS = ("../shared/data/eval",)  # relative to the repository; else the shipped subsets


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--datasets", nargs="+", default=["arc-e", "piqa"])
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--warmup", type=int, default=16, help="items scored first, untimed (compilation)")
    p.add_argument("--data-root", default=None, help="full sets; default: ../shared/data/eval beside the repo")
    p.add_argument("--skip-dense", action="store_true")
    p.add_argument("--out", default="runs/bench-eval")
    return p.parse_args(argv)


def data_root(arg: str | None) -> str:
    if arg is not None:
        return arg
    for r in DATA_ROOTS:
        if (REPO / r).is_dir():
            return str((REPO / r).resolve())
    return ""


def dense_backend(model, tokenizer, name: str):
    """The former local backend: the same tokenization, scored by plain padded forwards."""
    sys.path.insert(0, str(REPO / "tests"))
    from oracle import dense_loglikelihood

    from puyu_jax.eval.backends import Score
    from puyu_jax.eval.backends.local import LocalBackend

    class DenseBackend(LocalBackend):
        def __init__(self):  # no engine: tokenization only
            self.model, self.tokenizer, self.name = model, tokenizer, name
            self.max_seq_len = model.cfg.max_position_embeddings

        def score_pairs(self, pairs):
            return [Score(*s) for s in dense_loglikelihood(self.model, pairs, batch_size=8, token_budget=8192)]

    return DenseBackend()


def run(backend, ds, rows, warmup: int) -> tuple[float, float, list[dict]]:
    from puyu_jax.eval.inferencers import infer

    t0 = time.perf_counter()
    infer(backend, ds, rows[:warmup], progress=False)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    preds = infer(backend, ds, rows, progress=False)
    return warm_s, time.perf_counter() - t0, preds


def main(argv=None):
    args = _parse(argv)
    from puyu_jax.eval.backends.local import LocalBackend
    from puyu_jax.eval.config import load_dataset_config
    from puyu_jax.eval.datasets import load_dataset
    from puyu_jax.eval.prompts import continuations
    from puyu_jax.pretrained import load_pretrained

    root = data_root(args.data_root)
    pre = load_pretrained(args.model)
    engine = LocalBackend(pre.model, pre.tokenizer, name="engine")
    dense = None if args.skip_dense else dense_backend(pre.model, pre.tokenizer, "dense")
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    report = {"date": date, "model": args.model, "cpus": os.cpu_count(), "loadavg_before": os.getloadavg(),
              "data_root": root or "(shipped subsets)", "datasets": {}}
    lines = ["| dataset | items | options | engine items/s | dense items/s | speed-up | accuracy engine / dense "
             "| max per-option log-prob diff |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in args.datasets:
        ds = load_dataset(load_dataset_config(name, [f"max_samples={args.samples}"], root))
        rows = ds.test[: args.samples]
        n_opts = sum(len(continuations(ds, r)) for r in rows)
        res = {}
        for label, backend in (("engine", engine), ("dense", dense)):
            if backend is None:
                continue
            warm_s, s, preds = run(backend, ds, rows, args.warmup)
            acc = 100.0 * sum(p["prediction"] == p["gold"] for p in preds) / len(preds)
            res[label] = {"warmup_s": warm_s, "seconds": s, "items_per_s": len(rows) / s, "accuracy": acc,
                          "values": [p["logprobs"] for p in preds]}
            print(f"{name} {label}: {len(rows)} items in {s:.1f} s ({len(rows) / s:.2f} items/s, warm-up "
                  f"{warm_s:.1f} s), accuracy {acc:.1f}", flush=True)
        diff = speed = float("nan")
        if "dense" in res:
            diff = max(abs(a[k] - b[k]) for a, b in zip(res["engine"]["values"], res["dense"]["values"]) for k in a)
            speed = res["dense"]["seconds"] / res["engine"]["seconds"]
            print(f"{name}: engine {speed:.2f}x the dense backend; max per-option value difference {diff:.2e}")
        report["datasets"][name] = {k: {kk: vv for kk, vv in v.items() if kk != "values"} for k, v in res.items()}
        report["datasets"][name].update(speedup=speed, max_value_diff=diff, items=len(rows))
        d = res.get("dense", {})
        lines.append(f"| {name} | {len(rows)} | {n_opts or '-'} | {res['engine']['items_per_s']:.2f} | "
                     f"{d.get('items_per_s', float('nan')):.2f} | {speed:.2f}x | {res['engine']['accuracy']:.1f} / "
                     f"{d.get('accuracy', float('nan')):.1f} | {diff:.1e} |")
    report["loadavg_after"] = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    (out / "eval.md").write_text(f"measured {date}, load average {report['loadavg_before']}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}/eval.json, eval.md")


if __name__ == "__main__":
    main()
