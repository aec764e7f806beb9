"""Evaluators: (rows, predictions) -> metrics and per-sample details. Scores are percentages.

accuracy   prediction == gold (optionally averaged per `average_by` column first, as
           OpenCompass averages MMLU over subjects); for option scoring also acc, acc_norm
           and acc_nll, the accuracies of the three decision rules on the same log-likelihoods
gsm8k      numeric equality with the number after '####' in the gold solution
em_f1_zh   CMRC2018's official EM / F1 (character-level for Chinese, longest common substring)
qa_em      open-domain QA (TriviaQA, NaturalQuestions): SQuAD-normalized exact match against any
           accepted answer (`answers_column`), and token F1
rouge      ROUGE-1 / 2 / L F-measures (Google's rouge-score, stemmed, as lm-eval and HF
           `evaluate` compute them); score rougeL unless `metric` says otherwise
humaneval  pass@1: prompt + completion + tests run in the sandbox (subprocess, rlimits, no network)
mbpp       pass@1: completion + the row's `test_setup_code` and `test_list` asserts in the sandbox
math       MATH answers: equal after the usual LaTeX normalization (fractions, units, spaces,
           \\left / \\right, ...) or numerically equal
ifeval     IFEval's verifiable instructions (see puyu_jax.eval.ifeval): prompt- and instruction-level
           strict / loose accuracy, each instruction's verdicts per sample; no reference answers
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


def _averaged(rows, correct: list[bool], by: str) -> tuple[float, dict[str, float]]:
    """The mean over the values of column `by` of the per-value accuracies, and those accuracies."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for r, c in zip(rows, correct):
        groups[str(r.get(by, ""))].append(c)
    per = {k: _mean(v) for k, v in sorted(groups.items())}
    return (sum(per.values()) / len(per) if per else 0.0), per


def accuracy(rows, preds, cfg: EvaluatorConfig) -> dict:
    correct = [str(p["pred"]).strip() == str(p["gold"]).strip() for p in preds]
    metrics = {"accuracy": _mean(correct)}
    score = metrics["accuracy"]
    if cfg.average_by:
        metrics["naive_average"], metrics[f"by_{cfg.average_by}"] = _averaged(rows, correct, cfg.average_by)
        score = metrics["naive_average"]
    metric = "accuracy"
    if preds and preds[0].get("choices"):  # option scoring: every decision rule on the same log-likelihoods
        for rule in preds[0]["choices"]:
            ok = [p["choices"][rule] == str(p["gold"]).strip() for p in preds]
            metrics[rule] = _averaged(rows, ok, cfg.average_by)[0] if cfg.average_by else _mean(ok)
        metric = preds[0].get("rule") or metric  # the dataset's rule: its score, named as lm-eval names it
        score = metrics.get(metric, score)
    return {"score": score, "metric": metric, "metrics": metrics, "correct": correct}


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


def run_programs(programs: list[str], cfg: EvaluatorConfig) -> list[tuple[bool, str]]:
    """(passed, error tail) of each program run in the sandbox (rlimits, no network)."""
    from puyu_jax.agent.tools.sandbox import SandboxLimits, run_code

    limits = SandboxLimits(timeout_s=cfg.timeout_s, cpu_seconds=max(1, int(cfg.timeout_s) + 1),
                           memory_mb=cfg.memory_mb, output_chars=2000, isolate_network=True)

    def one(code):
        res = run_code(code, limits)
        return res.error is None and not res.timed_out, (res.error or "")[-300:]

    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        return list(pool.map(one, programs))


def _pass_at_1(outcomes: list[tuple[bool, str]]) -> dict:
    passed = [ok for ok, _ in outcomes]
    score = _mean(passed)
    return {"score": score, "metric": "pass@1", "metrics": {"pass@1": score}, "correct": passed,
            "per_sample": [{"error": err} if err else {} for _, err in outcomes]}


def humaneval(rows, preds, cfg: EvaluatorConfig) -> dict:
    return _pass_at_1(run_programs([humaneval_program(r, p["pred"]) for r, p in zip(rows, preds)], cfg))


def mbpp_program(row: dict, completion: str) -> str:
    """The completion, the row's setup code, then its asserts (MBPP's own check)."""
    tests = row.get("test_list") or []
    return f"{completion}\n\n{row.get('test_setup_code') or ''}\n" + "\n".join(tests) + "\n"


def mbpp(rows, preds, cfg: EvaluatorConfig) -> dict:
    return _pass_at_1(run_programs([mbpp_program(r, p["pred"]) for r, p in zip(rows, preds)], cfg))


# ---------------------------------------------------------------- open-domain QA (SQuAD normalization)
def normalize_answer(s: str) -> str:
    """Lower case, no punctuation, no articles (a / an / the), single spaces (SQuAD's rule)."""
    s = "".join(c for c in str(s).lower() if c not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _token_f1(pred: str, ref: str) -> float:
    p, r = normalize_answer(pred).split(), normalize_answer(ref).split()
    common = sum(min(p.count(t), r.count(t)) for t in set(p))
    if not p or not r or not common:
        return float(p == r)
    prec, rec = common / len(p), common / len(r)
    return 2 * prec * rec / (prec + rec)


def qa_em(rows, preds, cfg: EvaluatorConfig) -> dict:
    em, f1 = [], []
    for r, p in zip(rows, preds):
        refs = r.get(cfg.answers_column) if cfg.answers_column else None
        refs = refs if isinstance(refs, (list, tuple)) else [refs if refs is not None else p["gold"]]
        refs = [str(x) for x in refs] or [str(p["gold"])]
        em.append(any(normalize_answer(p["pred"]) == normalize_answer(x) for x in refs))
        f1.append(max(_token_f1(p["pred"], x) for x in refs))
    metrics = {"em": _mean(em), "f1": _mean(f1)}
    return {"score": metrics[cfg.metric or "em"], "metric": cfg.metric or "em", "metrics": metrics, "correct": em,
            "per_sample": [{"f1": round(x, 4)} for x in f1]}


# ---------------------------------------------------------------- ROUGE
def rouge(rows, preds, cfg: EvaluatorConfig) -> dict:
    from rouge_score import rouge_scorer

    keys = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    per = [scorer.score(str(p["gold"]), str(p["pred"])) for p in preds]
    metrics = {k: _mean(x[k].fmeasure for x in per) for k in keys}
    metric = cfg.metric or "rougeL"
    if metric not in metrics:
        raise ValueError(f"evaluator.metric={metric!r}: rouge reports {', '.join(keys)}")
    return {"score": metrics[metric], "metric": metric, "metrics": metrics,
            "correct": [x["rougeL"].fmeasure >= 0.999 for x in per],
            "per_sample": [{k: round(100 * x[k].fmeasure, 2) for k in keys} for x in per]}


# ---------------------------------------------------------------- MATH
def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{2} -> \\frac{1}{2}."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 2:
            out += part
            continue
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def normalize_math(s: str) -> str:
    """The usual normalization of MATH answers before comparing them as strings."""
    s = str(s).strip().replace("\n", "").replace("\\!", "")
    s = s.replace("\\\\", "\\").replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:text|mbox|mathrm)\{\s*([^{}]*)\}", r"\1", s) if re.fullmatch(
        r"\s*\\(?:text|mbox|mathrm)\{[^{}]*\}\s*", s) else re.sub(r"\s*\\(?:text|mbox)\{\s[^{}]*\}\s*$", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if s.count("=") == 1 and len(s.split("=")[0].strip()) <= 2:
        s = s.split("=")[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    s = re.sub(r"(\d),(?=\d{3}(\D|$))", r"\1", s)  # 1,000 -> 1000
    return s.rstrip(".")


def math_equal(pred: str, gold: str) -> bool:
    a, b = normalize_math(pred), normalize_math(gold)
    if a == b:
        return True
    try:
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def math_answers(rows, preds, cfg: EvaluatorConfig) -> dict:
    correct = [bool(p["pred"]) and math_equal(p["pred"], p["gold"]) for p in preds]
    acc = _mean(correct)
    return {"score": acc, "metric": "accuracy", "metrics": {"accuracy": acc}, "correct": correct}


def ifeval(rows, preds, cfg: EvaluatorConfig) -> dict:
    from puyu_jax.eval.ifeval import score_rows

    res = score_rows(rows, [p["pred"] for p in preds])
    metric = cfg.metric or "prompt_level_strict_acc"
    if metric not in res["metrics"] or metric == "by_instruction":
        raise ValueError(f"evaluator.metric={metric!r}: ifeval reports prompt_level_strict_acc, inst_level_strict_acc, "
                         "prompt_level_loose_acc, inst_level_loose_acc")
    return {"score": res["metrics"][metric], "metric": metric, **res}


def run_evaluator(cfg: EvaluatorConfig, rows: list[dict], preds: list[dict], *, judge=None, cache=None) -> dict:
    """Dispatches on `cfg.type`; `preds` items carry `pred` (postprocessed) and `gold`.
    `judge` / `cache` are used by llm_judge only."""
    if cfg.type == "llm_judge":
        from puyu_jax.eval.judge import judge_mt_bench

        return judge_mt_bench(rows, preds, cfg, judge=judge, cache=cache)
    fn = {"accuracy": accuracy, "gsm8k": gsm8k, "em_f1_zh": em_f1_zh, "humaneval": humaneval, "mbpp": mbpp,
          "qa_em": qa_em, "rouge": rouge, "math": math_answers, "ifeval": ifeval}[cfg.type]
    return fn(rows, preds, cfg)
