"""puyu eval against lm-eval's HF backend on the same model and the same items.

For each multiple-choice dataset (default ARC-Easy and PIQA, the shipped subsets), the very
prompts and options puyu scores are written out as an lm-eval task (`output_type:
multiple_choice`, target delimiter " ", metrics acc and acc_norm) and run with lm-eval 0.4.13's
`hf` model on SmolLM2-135M-Instruct (transformers reading the same GGUF file); puyu runs the same
items through its local backend. Reported: acc and acc_norm of both, per-sample agreement of the
two rules' choices, the largest log-likelihood difference, and samples/s of each (model loading
excluded; each run once after a warm-up on the first item).

    python tools/bench/eval_lm_eval.py [--datasets arc-e,piqa] [--limit 30] [--batch-size 8] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def _parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="arc-e,piqa")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch threads for the HF backend")
    p.add_argument("--out", default="", help="also write the results as JSON here")
    return p.parse_args()


def _lm_eval_task(name: str, preds: list[dict], rows: dict, folder: Path) -> str:
    """An lm-eval task over exactly puyu's prompts and option texts (YAML + local jsonl)."""
    data = folder / f"{name}.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for p in preds:
            labels = list(p["logprobs"])
            f.write(json.dumps({"query": p["prompt"], "choices": [str(o) for o in rows[p["id"]]["options"]],
                                "gold": labels.index(p["gold"]), "id": p["id"]}, ensure_ascii=False) + "\n")
    task = f"puyu_{name.replace('-', '_')}"
    (folder / f"{task}.yaml").write_text(
        f"task: {task}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{query}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{gold}}\"\ntarget_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    return task


def main() -> None:
    args = _parse()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from puyu_jax.eval import load_dataset, load_dataset_config, predict, score
    from puyu_jax.eval.backends import make_backend
    from puyu_jax.eval.config import ModelSpec
    from puyu_jax.models.gguf import find_smollm2_gguf

    torch.set_num_threads(args.threads)
    gguf = Path(find_smollm2_gguf())
    t0 = time.perf_counter()
    ours = make_backend(ModelSpec(path="smollm2", batch_size=args.batch_size))
    load_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = HFLM(pretrained=str(gguf.parent), gguf_file=gguf.name, dtype="float32", batch_size=args.batch_size,
              device="cpu")
    load_hf = time.perf_counter() - t0
    report = {"model": gguf.name, "limit": args.limit, "batch_size": args.batch_size, "load_s": {
        "puyu": round(load_ours, 1), "lm_eval_hf": round(load_hf, 1)}, "datasets": {}}
    folder = Path(tempfile.mkdtemp(prefix="puyu_lm_eval_"))
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        cfg = load_dataset_config(name, [f"max_samples={args.limit}"])
        ds = load_dataset(cfg)
        rows = {r["_id"]: r for r in ds.test}
        predict(ours, ds.__class__(cfg, ds.test[:1], ds.dev), progress=False)  # warm-up
        t0 = time.perf_counter()
        preds = predict(ours, ds, progress=False)
        t_ours = time.perf_counter() - t0
        res = score(ds, preds)
        task = _lm_eval_task(name, preds, rows, folder)
        tm = TaskManager(include_path=str(folder))
        simple_evaluate(model=hf, tasks=[task], task_manager=tm, limit=1, log_samples=False)  # warm-up
        t0 = time.perf_counter()
        lm = simple_evaluate(model=hf, tasks=[task], task_manager=tm, log_samples=True)
        t_lm = time.perf_counter() - t0
        samples = sorted(lm["samples"][task], key=lambda s: s["doc_id"])
        agree = {"acc": 0, "acc_norm": 0}
        max_dll = 0.0
        for p, s in zip(preds, samples):
            labels = list(p["logprobs"])
            lls = np.array([float(r[0]) for r in s["filtered_resps"]])
            lens = np.array([len(c) for c in s["doc"]["choices"]])
            agree["acc"] += labels[int(np.argmax(lls))] == p["choices"]["acc"]
            agree["acc_norm"] += labels[int(np.argmax(lls / lens))] == p["choices"]["acc_norm"]
            max_dll = max(max_dll, float(np.max(np.abs(lls - np.array([p["logprobs"][lab] for lab in labels])))))
        r = lm["results"][task]
        report["datasets"][name] = row = {
            "items": len(preds),
            "puyu": {"acc": round(res["metrics"]["acc"], 2), "acc_norm": round(res["metrics"]["acc_norm"], 2),
                     "samples_per_s": round(len(preds) / t_ours, 2)},
            "lm_eval_hf": {"acc": round(100 * r["acc,none"], 2), "acc_norm": round(100 * r["acc_norm,none"], 2),
                           "samples_per_s": round(len(preds) / t_lm, 2)},
            "same_choice": agree, "max_abs_loglikelihood_diff": round(max_dll, 4)}
        print(json.dumps({name: row}), flush=True)  # each dataset as soon as it is done
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    print("\n| dataset | items | puyu acc | lm-eval acc | puyu acc_norm | lm-eval acc_norm | same choice acc / "
          "acc_norm | max abs Δll | puyu samples/s | lm-eval samples/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, d in report["datasets"].items():
        print(f"| {name} | {d['items']} | {d['puyu']['acc']} | {d['lm_eval_hf']['acc']} | {d['puyu']['acc_norm']} | "
              f"{d['lm_eval_hf']['acc_norm']} | {d['same_choice']['acc']} / {d['same_choice']['acc_norm']} | "
              f"{d['max_abs_loglikelihood_diff']} | {d['puyu']['samples_per_s']} | "
              f"{d['lm_eval_hf']['samples_per_s']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
