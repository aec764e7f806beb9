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


POSTPROCESSORS = {
    "none": lambda s: s.strip(),
    "first_option": first_option,
    "gsm8k": last_number,
    "cmrc": cmrc,
    "first_line": lambda s: (s.strip().splitlines() or [""])[0].strip(),
    "code": code_block,
}


def postprocess(name: str, text: str) -> str:
    """Applies the postprocessor `name` (one of POSTPROCESSORS)."""
    if name not in POSTPROCESSORS:
        raise ValueError(f"postprocessor {name!r}: expected one of {', '.join(POSTPROCESSORS)}")
    return POSTPROCESSORS[name](text)
