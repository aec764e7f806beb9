"""Text primitives shared by the stages: words (CJK characters count one each), lines,
paragraphs and vectorized n-gram statistics."""

from __future__ import annotations

import re

import numpy as np

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff"
CJK_RE = re.compile(f"[{_CJK}]")
# a CJK character alone, or a run of letters/digits that are not CJK
WORD_RE = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
PARA_RE = re.compile(r"\n\s*\n")
_MUL = np.uint64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    """Words of `text`: letter/digit runs, with each CJK character a word by itself."""
    return WORD_RE.findall(text)


def cjk_fraction(ws: list[str]) -> float:
    """Fraction of `ws` that are single CJK characters."""
    if not ws:
        return 0.0
    return sum(1 for w in ws if len(w) == 1 and CJK_RE.match(w)) / len(ws)


def lines(text: str) -> list[str]:
    """Non-empty stripped lines."""
    return [s for s in (x.strip() for x in text.split("\n")) if s]


def paragraphs(text: str) -> list[str]:
    """Non-empty stripped paragraphs (split on blank lines)."""
    return [s for s in (x.strip() for x in PARA_RE.split(text)) if s]


def dup_stats(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of characters in them)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    n_dup = c_dup = total = 0
    for it in items:
        total += len(it)
        if it in seen:
            n_dup += 1
            c_dup += len(it)
        else:
            seen.add(it)
    return n_dup / len(items), (c_dup / total if total else 0.0)


def word_ids(ws: list[str]) -> np.ndarray:
    """Dense ids of words in first-seen order (equal words, equal ids), uint64."""
    vocab: dict[str, int] = {}
    return np.fromiter((vocab.setdefault(w, len(vocab)) for w in ws), dtype=np.uint64, count=len(ws))


def ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit key per n-gram of `ids` (length len(ids) - n + 1), by polynomial hashing."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.zeros(0, np.uint64)
    key = np.zeros(m, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            key = key * _MUL + ids[k : k + m] + np.uint64(1)
    return key


def top_ngram_char_frac(ids: np.ndarray, wlen: np.ndarray, n: int) -> float:
    """Characters covered by the most frequent n-gram (times its count) over all word characters."""
    keys = ngram_keys(ids, n)
    total = float(wlen.sum())
    if len(keys) == 0 or total == 0:
        return 0.0
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if counts.max() <= 1:
        return 0.0
    best = int(np.argmax(counts))
    start = int(first[best])
    return float(wlen[start : start + n].sum()) * int(counts[best]) / total


def dup_ngram_char_frac(ids: np.ndarray, wlen: np.ndarray, n: int) -> float:
    """Fraction of word characters inside n-grams that occur more than once."""
    keys = ngram_keys(ids, n)
    total = float(wlen.sum())
    if len(keys) == 0 or total == 0:
        return 0.0
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    dup = counts[inv] > 1
    if not dup.any():
        return 0.0
    diff = np.zeros(len(ids) + 1, np.int64)
    starts = np.nonzero(dup)[0]
    np.add.at(diff, starts, 1)
    np.add.at(diff, starts + n, -1)
    covered = np.cumsum(diff[:-1]) > 0
    return float(wlen[covered].sum()) / total
