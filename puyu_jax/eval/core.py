"""The functional core: `evaluate(backend, dataset_cfg) -> results`, in two halves.

`predict` runs the inferencer over (a shard of) a dataset and returns raw predictions;
`score` postprocesses them and runs the evaluator. Neither holds state: the config, the
backend and the optional cache passed in are everything they use.
"""

from __future__ import annotations

import math

from puyu_jax.eval.cache import PredictionCache
from puyu_jax.eval.config import DatasetConfig
from puyu_jax.eval.datasets import Dataset, load_dataset
from puyu_jax.eval.evaluators import run_evaluator
from puyu_jax.eval.inferencers import infer
from puyu_jax.eval.postprocess import postprocess


def num_shards(n_rows: int, shard_size: int) -> int:
    """Shards of at most `shard_size` rows (0 = one shard)."""
    return max(1, math.ceil(n_rows / shard_size)) if shard_size > 0 else 1


def shard_rows(rows: list, shard: int, shards: int) -> list:
    """The contiguous slice `shard` of `shards` (the last may be shorter)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} out of range for {shards} shards")
    size = math.ceil(len(rows) / shards) if rows else 0
    return rows[shard * size:(shard + 1) * size]


def predict(backend, cfg: DatasetConfig | Dataset, *, shard: int = 0, shards: int = 1,
            cache: PredictionCache | None = None, meta: str = "", progress: bool = True) -> list[dict]:
    """Raw predictions for one shard of a dataset (see `puyu_jax.eval.inferencers.infer`)."""
    ds = cfg if isinstance(cfg, Dataset) else load_dataset(cfg)
    return infer(backend, ds, shard_rows(ds.test, shard, shards), cache=cache, meta=meta, progress=progress)


def score(cfg: DatasetConfig | Dataset, predictions: list[dict], *, judge=None,
          cache: PredictionCache | None = None) -> dict:
    """Postprocesses and evaluates predictions (of all shards, any order).

    Returns:
      {dataset, abbr, group, metric, score, metrics, num_samples, details: [per sample]}.
    """
    ds = cfg if isinstance(cfg, Dataset) else load_dataset(cfg)
    c = ds.cfg
    by_id = {r["_id"]: r for r in ds.test}
    order = {r["_id"]: i for i, r in enumerate(ds.test)}
    predictions = sorted(predictions, key=lambda p: order[p["id"]])
    rows = [by_id[p["id"]] for p in predictions]
    gen = c.inferencer.type == "gen"
    preds = []
    for p in predictions:
        raw = p["prediction"]
        if gen and isinstance(raw, list):
            pred = [postprocess(c.postprocessor, t) for t in raw]
        else:
            pred = postprocess(c.postprocessor, raw) if gen else raw
        preds.append({"pred": pred, "gold": p["gold"], "choices": p.get("choices"), "rule": p.get("rule")})
    res = run_evaluator(c.evaluator, rows, preds, judge=judge, cache=cache)
    extra = res.get("per_sample") or [{} for _ in preds]
    raw = ("rule", "choices", "logprobs", "tokens", "chars", "greedy")  # option scoring: every option's numbers
    details = [{"id": p["id"], "prediction": p["prediction"], "pred": q["pred"], "gold": q["gold"],
                "correct": ok, **{k: p[k] for k in raw if k in p}, **x}
               for p, q, ok, x in zip(predictions, preds, res["correct"], extra)]
    return {"dataset": c.name, "abbr": c.label, "group": c.group, "metric": res["metric"],
            "score": round(res["score"], 4), "metrics": res["metrics"], "num_samples": len(preds),
            "num_skipped": len(ds.skipped), "skipped": ds.skipped[:20], "details": details}


def evaluate(backend, cfg: DatasetConfig, *, cache: PredictionCache | None = None, meta: str = "", judge=None,
             progress: bool = False) -> dict:
    """Runs a backend over a whole dataset and scores it.

    Args:
      backend: see `puyu_jax.eval.backends` (local, OpenAI URL, gold, constant).
      cfg: the dataset config.
      cache: optional per-sample prediction cache (resume without recomputing).
      meta: meta template override (base / chat; "" = the dataset's).
      judge: backend of the LLM judge (llm_judge evaluator; default from the config's URL).
    Returns:
      the results dict of `score`.
    """
    ds = load_dataset(cfg)
    return score(ds, predict(backend, ds, cache=cache, meta=meta, progress=progress), judge=judge, cache=cache)
