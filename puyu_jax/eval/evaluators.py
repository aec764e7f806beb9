"""Evaluators: (rows, predictions) -> metrics and per-sample details. Scores are percentages.

accuracy   prediction == gold (optionally averaged per `average_by` column first, as
           OpenCompass averages MMLU over subjects)
gsm8k      numeric equality with the number after '####' in the gold solution
em_f1_zh   CMRC2018's official EM / F1 (character-level for Chinese, longest common substring)
humaneval  pass@1: prompt + completion + tests run in the sandbox (subprocess, rlimits, no network)
llm_judge  MT-bench single-answer grading by an LLM judge (see puyu_jax.eval.judge)
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from puyu_jax.eval.config import EvaluatorConfig


def _mean(xs) -> float:
    xs = list(xs)
    return 100.0 * sum(xs) / len(xs) if xs else 0.0


def accuracy(rows, preds, cfg: EvaluatorConfig) -> dict:
    correct = [str(p["pred"]).strip() == str(p["gold"]).strip() for p in preds]
    metrics = {"accuracy": _mean(correct)}
    score = metrics["accuracy"]
    if cfg.average_by:
        groups: dict[str, list[bool]] = defaultdict(list)
        for r, c in zip(rows, correct):
            groups[str(r.get(cfg.average_by, ""))].append(c)
        metrics["naive_average"] = score = sum(_mean(v) for v in groups.values()) / len(groups) if groups else 0.0
        metrics[f"by_{cfg.average_by}"] = {k: _mean(v) for k, v in sorted(groups.items())}
    return {"score": score, "metric": "accuracy", "metrics": metrics, "correct": correct}


def _number(s: str) -> float | None:
    try:
        return float(str(s).replace(",", "").strip().rstrip("."))
    except ValueError:
        return None


def gsm8k(rows, preds, cfg: EvaluatorConfig) -> dict:
    correct = []
    for p in preds:
        gold = str(p["gold"]).split("####")[-1]
        g, x = _number(gold), _number(p["pred"])
        correct.append(g is not None and x is not None and abs(g - x) < 1e-6)
    acc = _mean(correct)
    return {"score": acc, "metric": "accuracy", "metrics": {"accuracy": acc}, "correct": correct}


# ---------------------------------------------------------------- CMRC2018 (official script's rules)
_SP_CHAR = set("-:_*^/\\~`+=，。：？！“”；’《》·、「」（）－～『』") | {"……"}
_CJK = re.compile("[\u4e00-\u9fa5]")


def remove_punctuation(s: str) -> str:
    s = str(s).lower().strip()
    return "".join(c for c in s if c not in _SP_CHAR)


def mixed_segmentation(s: str, rm_punc: bool = False) -> list[str]:
    """Chinese characters one by one; runs of other text split into words (the official script
    uses nltk.word_tokenize there; a word/punctuation regex gives the same on answer spans)."""
    s = str(s).lower().strip()
    segs, tmp = [], ""

    def flush():
        nonlocal tmp
        if tmp:
            segs.extend(re.findall(r"\w+|[^\w\s]", tmp))
            tmp = ""

    for c in s:
        if rm_punc and c in _SP_CHAR:
            continue
        if _CJK.search(c) or c in _SP_CHAR:
            flush()
            segs.append(c)
        else:
            tmp += c
    flush()
    if rm_punc:
        segs = [x for x in segs if x not in string.punctuation]
    return segs


def _lcs_len(a: list[str], b: list[str]) -> int:
    """Length of the longest common contiguous run (the official `find_lcs`)."""
    best, prev = 0, [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                cur[j + 1] = prev[j] + 1
                best = max(best, cur[j + 1])
        prev = cur
    return best


def cmrc_f1(pred: str, answers: list[str]) -> float:
    best = 0.0
    p = mixed_segmentation(pred, rm_punc=True)
    for ans in answers:
        a = mixed_segmentation(ans, rm_punc=True)
        n = _lcs_len(a, p)
        if n == 0:
            continue
        prec, rec = n / len(p), n / len(a)
        best = max(best, 2 * prec * rec / (prec + rec))
    return best


def cmrc_em(pred: str, answers: list[str]) -> float:
    return float(any(remove_punctuation(a) == remove_punctuation(pred) for a in answers))


def em_f1_zh(rows, preds, cfg: EvaluatorConfig) -> dict:
    em, f1 = [], []
    for r, p in zip(rows, preds):
        answers = r.get("answers") or [p["gold"]]
        em.append(cmrc_em(p["pred"], answers))
        f1.append(cmrc_f1(p["pred"], answers))
    metrics = {"em": _mean(em), "f1": _mean(f1)}
    return {"score": metrics["em"], "metric": "em", "metrics": metrics, "correct": [bool(x) for x in em],
            "per_sample": [{"f1": round(x, 4)} for x in f1]}


# ---------------------------------------------------------------- HumanEval
def humaneval_program(row: dict, completion: str) -> str:
    """The program to run: the prompt + completion (or the completion alone when it defines the
    entry point itself, with the prompt's imports), then the tests and `check(entry_point)`."""
    entry = row["entry_point"]
    if re.search(rf"^def\s+{re.escape(entry)}\s*\(", completion, flags=re.MULTILINE):
        imports = "\n".join(x for x in row["prompt"].splitlines() if x.startswith(("import ", "from ")))
        code = imports + "\n" + completion
    else:
        code = row["prompt"] + completion
    return f"{code}\n\n{row['test']}\n\ncheck({entry})\n"


def humaneval(rows, preds, cfg: EvaluatorConfig) -> dict:
    from puyu_jax.agent.tools.sandbox import SandboxLimits, run_code

    limits = SandboxLimits(timeout_s=cfg.timeout_s, cpu_seconds=max(1, int(cfg.timeout_s) + 1),
                           memory_mb=cfg.memory_mb, output_chars=2000, isolate_network=True)

    def one(args):
        row, pred = args
        res = run_code(humaneval_program(row, pred["pred"]), limits)
        return res.error is None and not res.timed_out, (res.error or "")[-300:]

    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        outcomes = list(pool.map(one, zip(rows, preds)))
    passed = [ok for ok, _ in outcomes]
    score = _mean(passed)
    return {"score": score, "metric": "pass@1", "metrics": {"pass@1": score}, "correct": passed,
            "per_sample": [{"error": err} if err else {} for _, err in outcomes]}


def run_evaluator(cfg: EvaluatorConfig, rows: list[dict], preds: list[dict], *, judge=None, cache=None) -> dict:
    """Dispatches on `cfg.type`; `preds` items carry `pred` (postprocessed) and `gold`.
    `judge` / `cache` are used by llm_judge only."""
    if cfg.type == "llm_judge":
        from puyu_jax.eval.judge import judge_mt_bench

        return judge_mt_bench(rows, preds, cfg, judge=judge, cache=cache)
    fn = {"accuracy": accuracy, "gsm8k": gsm8k, "em_f1_zh": em_f1_zh, "humaneval": humaneval}[cfg.type]
    return fn(rows, preds, cfg)
