"""Inferencers: rows -> raw predictions, through a backend and the prediction cache.

ppl / loglikelihood score every option as a continuation of the prompt; gen generates
(one reply per user turn when `multi_turn`). Requests go to the backend in chunks; each
chunk's answers are cached before the next, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from puyu_jax.eval.cache import PredictionCache, request_key
from puyu_jax.eval.datasets import Dataset
from puyu_jax.eval.prompts import build_prompt, continuations


def _cached_map(backend, kind: str, payloads: list, compute: Callable[[list], list], cache: PredictionCache | None,
                chunk: int, desc: str, progress: bool) -> list:
    """compute(payloads) with per-item caching; misses are computed `chunk` at a time."""
    keys = [request_key(backend.name, kind, p) for p in payloads]
    out = [cache.get(k) if cache is not None else None for k in keys]
    todo = [i for i, v in enumerate(out) if v is None]
    # identical requests (shared few-shot contexts, constant options) are computed once
    first: dict[str, int] = {}
    unique = [i for i in todo if first.setdefault(keys[i], i) == i]
    bar = tqdm(total=len(unique), desc=desc, disable=not progress or not unique, leave=False)
    for s in range(0, len(unique), chunk):
        part = unique[s:s + chunk]
        values = compute([payloads[i] for i in part])
        fresh = {keys[i]: v for i, v in zip(part, values)}
        if cache is not None:
            cache.put_many(fresh)
        for i, v in zip(part, values):
            out[i] = v
        bar.update(len(part))
    bar.close()
    for i in todo:
        if out[i] is None:
            out[i] = out[first[keys[i]]]
    return out


def _option_value(score: Sequence, continuation: str, kind: str, normalize: str) -> float:
    """Lower is better: mean token NLL (ppl/token), NLL per char, total NLL; -logprob for loglikelihood."""
    logprob, tokens = score[0], score[1]
    if kind == "loglikelihood" or normalize == "none":
        return -logprob
    if normalize == "char":
        return -logprob / max(1, len(continuation))
    return -logprob / max(1, tokens)


def infer(backend, ds: Dataset, rows: Sequence[dict], *, cache: PredictionCache | None = None, meta: str = "",
          progress: bool = True, chunk: int = 64) -> list[dict]:
    """Raw predictions for `rows` of `ds`.

    Returns:
      one dict per row: id, gold, prompt and prediction (the chosen label for ppl /
      loglikelihood, with per-option `values` and `greedy`; the text, or one text per turn,
      for gen).
    """
    icfg = ds.cfg.inferencer
    desc = f"{ds.cfg.label} [{icfg.type}]"
    if icfg.type in ("ppl", "loglikelihood"):
        prompts = [build_prompt(ds, r, meta) for r in rows]
        options = [continuations(ds, r, meta) for r in rows]
        flat = [[p, c] for p, opts in zip(prompts, options) for _, c in opts]
        scores = _cached_map(backend, "ll", flat, lambda reqs: [list(s) for s in backend.loglikelihood(
            [tuple(x) for x in reqs])], cache, chunk, desc, progress)
        out, k = [], 0
        for row, prompt, opts in zip(rows, prompts, options):
            vals = [_option_value(scores[k + j], c, icfg.type, icfg.normalize) for j, (_, c) in enumerate(opts)]
            best = min(range(len(opts)), key=lambda j: vals[j])
            out.append({"id": row["_id"], "gold": ds.gold(row), "prompt": prompt, "prediction": opts[best][0],
                        "values": dict(zip([lab for lab, _ in opts], vals)),
                        "greedy": [bool(scores[k + j][2]) for j in range(len(opts))]})
            k += len(opts)
        return out
    gen = lambda ps: backend.generate(ps, icfg.max_out_len, icfg.stops)  # noqa: E731
    gen_payload = lambda p: [p, icfg.max_out_len, list(icfg.stops)]  # noqa: E731
    if not icfg.multi_turn:
        prompts = [build_prompt(ds, r, meta) for r in rows]
        texts = _cached_map(backend, "gen", [gen_payload(p) for p in prompts], lambda ps: gen([p[0] for p in ps]),
                            cache, chunk, desc, progress)
        return [{"id": r["_id"], "gold": ds.gold(r), "prompt": p, "prediction": t}
                for r, p, t in zip(rows, prompts, texts)]
    # multi-turn chat: round k asks turn k of every row that has one, after its earlier turns
    convs: list[list[dict]] = [[] for _ in rows]
    answers: list[list[str]] = [[] for _ in rows]
    for turn in range(max((len(r["turns"]) for r in rows), default=0)):
        live = [i for i, r in enumerate(rows) if turn < len(r["turns"])]
        for i in live:
            convs[i] = convs[i] + [{"role": "user", "content": rows[i]["turns"][turn]}]
        texts = _cached_map(backend, "gen", [gen_payload(convs[i]) for i in live], lambda ps: gen([p[0] for p in ps]),
                            cache, chunk, f"{desc} turn {turn + 1}", progress)
        for i, t in zip(live, texts):
            answers[i].append(t)
            convs[i] = convs[i] + [{"role": "assistant", "content": t}]
    return [{"id": r["_id"], "gold": ds.gold(r), "prompt": r["turns"], "prediction": a} for r, a in zip(rows, answers)]
