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
from puyu_jax.eval.prompts import build_prompt, options


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


RULES = ("acc", "acc_norm", "acc_nll")  # the decision rules of option scoring (see InferencerConfig)
PRIMARY = {"none": "acc", "char": "acc_norm", "token": "acc_nll"}


def decide(logprobs: Sequence[float], tokens: Sequence[int], chars: Sequence[int]) -> dict[str, int]:
    """The option index each rule picks (ties: the first, as numpy's argmax).

    acc: max summed log-prob; acc_norm: max log-prob / characters of the option text (lm-eval);
    acc_nll: min mean token NLL, i.e. max log-prob / tokens (OpenCompass PPL)."""
    n = range(len(logprobs))
    return {"acc": max(n, key=lambda j: logprobs[j]),
            "acc_norm": max(n, key=lambda j: logprobs[j] / max(1, chars[j])),
            "acc_nll": max(n, key=lambda j: logprobs[j] / max(1, tokens[j]))}


def infer(backend, ds: Dataset, rows: Sequence[dict], *, cache: PredictionCache | None = None, meta: str = "",
          progress: bool = True, chunk: int = 64) -> list[dict]:
    """Raw predictions for `rows` of `ds`.

    Returns:
      one dict per row: id, gold, prompt and prediction. Option scoring (ppl / loglikelihood):
      the label the dataset's rule picks, `choices` ({rule: label} for acc / acc_norm /
      acc_nll), and per option label the raw summed `logprobs`, `tokens`, `chars` (option text
      length) and `greedy`. gen: the text, or one text per turn.
    """
    icfg = ds.cfg.inferencer
    desc = f"{ds.cfg.label} [{icfg.type}]"
    if icfg.type in ("ppl", "loglikelihood"):
        primary = "acc" if icfg.type == "loglikelihood" else PRIMARY[icfg.normalize]
        prompts = [build_prompt(ds, r, meta) for r in rows]
        opts = [options(ds, r, meta) for r in rows]
        flat = [[p, c] for p, os_ in zip(prompts, opts) for _, c, _ in os_]
        scores = _cached_map(backend, "ll", flat, lambda reqs: [list(s) for s in backend.loglikelihood(
            [tuple(x) for x in reqs])], cache, chunk, desc, progress)
        out, k = [], 0
        for row, prompt, os_ in zip(rows, prompts, opts):
            sc = scores[k:k + len(os_)]
            labels = [lab for lab, _, _ in os_]
            lp, toks, chars = [float(s[0]) for s in sc], [int(s[1]) for s in sc], [len(t) for _, _, t in os_]
            picks = {rule: labels[j] for rule, j in decide(lp, toks, chars).items()}
            out.append({"id": row["_id"], "gold": ds.gold(row), "prompt": prompt, "prediction": picks[primary],
                        "rule": primary, "choices": picks, "logprobs": dict(zip(labels, lp)),
                        "tokens": dict(zip(labels, toks)), "chars": dict(zip(labels, chars)),
                        "greedy": dict(zip(labels, (bool(s[2]) for s in sc)))})
            k += len(os_)
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
