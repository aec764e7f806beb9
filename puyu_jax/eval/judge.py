"""MT-bench single-answer grading by an LLM judge (FastChat's llm_judge rules).

Turn 1 uses the `single-v1` prompt, turn 2 `single-v1-multi-turn`; categories that need a
reference (math, reasoning, coding) use the `single-math-v1*` prompts with the reference
answers. The judge's `[[rating]]` (1-10) is extracted; a reply without one counts as failed
(-1) and is left out of the mean, as FastChat does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from puyu_jax.eval.config import ASSETS, EvaluatorConfig

NEED_REF = ("math", "reasoning", "coding")
_RATING = (re.compile(r"\[\[(\d+\.?\d*)\]\]"), re.compile(r"\[(\d+\.?\d*)\]"))


def load_judge_prompts(path: str | Path = "") -> dict[str, dict]:
    """name -> {system_prompt, prompt_template, ...} from judge_prompts.jsonl."""
    p = Path(path) if path else ASSETS / "mt_bench" / "judge_prompts.jsonl"
    return {d["name"]: d for d in (json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip())}


def extract_rating(text: str) -> float:
    """The judge's rating, or -1 when it gave none."""
    for pat in _RATING:
        m = pat.search(text)
        if m:
            return float(m.group(1))
    return -1.0


def judge_messages(prompts: dict[str, dict], row: dict, answers: list[str], turn: int) -> list[dict]:
    """The judge's chat request for `turn` (0 or 1) of a row."""
    ref = row.get("category") in NEED_REF and len(row.get("reference") or []) > turn
    name = ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if turn else "")
    jp = prompts[name]
    q, r = row["turns"], row.get("reference") or []
    if turn == 0:
        kw = {"question": q[0], "answer": answers[0]}
        if ref:
            kw["ref_answer_1"] = r[0]
    else:
        kw = {"question_1": q[0], "question_2": q[1], "answer_1": answers[0], "answer_2": answers[1]}
        if ref:
            kw.update(ref_answer_1=r[0], ref_answer_2=r[1])
    return [{"role": "system", "content": jp["system_prompt"]},
            {"role": "user", "content": jp["prompt_template"].format(**kw)}]


def judge_mt_bench(rows: list[dict], preds: list[dict], cfg: EvaluatorConfig, *, judge=None, cache=None) -> dict:
    """Grades every turn of every answer; score = mean rating (1-10) of the valid judgments.

    Args:
      judge: a backend with `generate` and `name` (default: an OpenAIBackend at `cfg.judge.url`).
      cache: an optional PredictionCache for the judge's replies.
    """
    from puyu_jax.eval.inferencers import _cached_map

    jc = cfg.judge
    if judge is None:
        if not jc.url:
            raise ValueError("the llm_judge evaluator needs evaluator.judge.url (an OpenAI-compatible server)")
        from puyu_jax.eval.backends.openai import OpenAIBackend

        judge = OpenAIBackend(jc.url, model=jc.model, api_key=jc.api_key, concurrency=jc.concurrency)
    prompts = load_judge_prompts(jc.prompts)
    requests, where = [], []
    for i, (row, p) in enumerate(zip(rows, preds)):
        answers = p["pred"] if isinstance(p["pred"], list) else [p["pred"]]
        for turn in range(min(len(row["turns"]), len(answers), 2)):
            requests.append([judge_messages(prompts, row, answers, turn), jc.max_tokens, []])
            where.append((i, turn))
    replies = _cached_map(judge, "judge", requests, lambda rs: judge.generate([r[0] for r in rs], jc.max_tokens),
                          cache, 16, "judge", False)
    per_sample: list[dict] = [{"ratings": [], "judgments": []} for _ in rows]
    for (i, turn), reply in zip(where, replies):
        per_sample[i]["ratings"].append(extract_rating(reply))
        per_sample[i]["judgments"].append(reply)
    valid = [(t, x) for s in per_sample for t, x in enumerate(s["ratings"]) if x >= 0]

    def mean(xs):
        return sum(xs) / len(xs) if xs else 0.0

    metrics = {"rating": mean([x for _, x in valid]), "turn_1": mean([x for t, x in valid if t == 0]),
               "turn_2": mean([x for t, x in valid if t == 1]), "failed": len(replies) - len(valid)}
    correct = [bool(s["ratings"]) and min(s["ratings"]) >= 8 for s in per_sample]
    return {"score": metrics["rating"], "metric": "rating (1-10)", "metrics": metrics, "correct": correct,
            "per_sample": per_sample}
