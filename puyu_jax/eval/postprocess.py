"""Postprocessors: a generated text -> the prediction the evaluator compares (OpenCompass names)."""

from __future__ import annotations

import re

_OPTION_PATTERNS = (
    r"(?i)answer is:?\s*\(?([A-E])\b",
    r"答案(?:是|为|：|:)\s*\(?([A-E])",
    r"(?i)answer:\s*\(?([A-E])\b",
    r"^\s*\(?([A-E])[\).:\s]",
    r"^\s*\(?([A-E])\)?\s*$",
    r"\b([A-E])\b",
)


def first_option(text: str) -> str:
    """The chosen option letter: 'the answer is B', '答案是B', a leading 'B.', else the first lone capital."""
    for pat in _OPTION_PATTERNS:
        m = re.search(pat, text, flags=re.MULTILINE)
        if m:
            return m.group(1)
    return ""


def last_number(text: str) -> str:
    """GSM8K: the number after '####' or 'answer is', else the last number in the text (commas dropped)."""
    text = text.split("Question:")[0].replace(",", "")
    for pat in (r"####\s*\$?(-?[\d.]+)", r"(?i)answer is:?\s*\$?(-?[\d.]+)"):
        m = re.search(pat, text)
        if m:
            return m.group(1).rstrip(".")
    nums = re.findall(r"-?\d+(?:\.\d+)?", text)
    return nums[-1] if nums else ""


def cmrc(text: str) -> str:
    """CMRC: the text after '答案是' (if any), first line, without trailing full stops."""
    for marker in ("答案是", "答案：", "答案:"):
        if marker in text:
            text = text.split(marker, 1)[1]
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[0].strip().rstrip("。.") if lines else ""


def code_block(text: str) -> str:
    """HumanEval: the first ```python block when there is one, else the text itself."""
    m = re.search(r"```(?:python|py)?\n(.*?)(?:```|$)", text, flags=re.DOTALL)
    return m.group(1) if m else text


def bbh_answer(text: str) -> str:
    """BBH: the text after the first 'answer is' (to the end of its line), without a final full
    stop; an option letter becomes '(X)', as the gold targets are written."""
    parts = text.split("answer is", 1)
    ans = parts[1] if len(parts) > 1 else text
    ans = ans.strip().split("\n")[0].strip()
    m = re.match(r"^\(?([A-R])\)(?:\s|\.|$)", ans) or re.fullmatch(r"([A-R])\.?", ans)
    if m:
        return f"({m.group(1)})"
    return ans[:-1].strip() if ans.endswith(".") else ans


def mbpp_code(text: str) -> str:
    """MBPP: the code between [BEGIN] and [DONE] (either may be missing), without the quotes
    and ``` fences models put around it."""
    m = re.search(r"\[DONE\]", text)
    if m:
        text = text[:m.start()]
    m = re.search(r"\[BEGIN\]", text)
    if m:
        text = text[m.end():]
    text = code_block(text) if "```" in text else text
    text = text.strip("\n")
    if text.strip().startswith("'") and text.strip().endswith("'"):
        text = text.strip()[1:-1]
    return text


def _last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} / \\fbox{...} (nested braces kept)."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        m = re.match(r"\\boxed\s+(\S+)", text[start:])
        return m.group(1).rstrip("$.") if m else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def math_answer(text: str) -> str:
    """MATH: the last \\boxed{} answer, else the text after 'answer is', else the last line
    (math delimiters and a final full stop removed)."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    m = re.findall(r"(?i)answer is:?\s*(.+)", text)
    ans = m[-1] if m else ((text.strip().splitlines() or [""])[-1])
    return ans.strip().strip("$").rstrip(".").strip().strip("$").strip()


POSTPROCESSORS = {
    "none": lambda s: s.strip(),
    "first_option": first_option,
    "gsm8k": last_number,
    "cmrc": cmrc,
    "first_line": lambda s: (s.strip().splitlines() or [""])[0].strip(),
    "code": code_block,
    "bbh": bbh_answer,
    "mbpp": mbpp_code,
    "math": math_answer,
}


def postprocess(name: str, text: str) -> str:
    """Applies the postprocessor `name` (one of POSTPROCESSORS)."""
    if name not in POSTPROCESSORS:
        raise ValueError(f"postprocessor {name!r}: expected one of {', '.join(POSTPROCESSORS)}")
    return POSTPROCESSORS[name](text)
