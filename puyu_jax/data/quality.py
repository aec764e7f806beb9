"""Model-based quality: perplexity under a hashed character n-gram language model.

The model is trained at start-up (milliseconds) on reference text shipped with the
package (Wikipedia prose for English, classical Chinese prose for Chinese), so scores
are deterministic and need no download. Probabilities use hierarchical Dirichlet
smoothing, ``p_n(c | h) = (count(h c) + beta * p_{n-1}(c | h')) / (count(h) + beta)``,
computed for a whole document at once with numpy.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from puyu_jax.data.config import QualityConfig

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_REFERENCE = ("reference_en.txt", "reference_zh.txt")
_DIGITS = re.compile(r"\d")
_WS = re.compile(r"\s+")
_PRIMES = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1, 0xD3A2646C], np.uint64)
BETA = 2.0
VOCAB = 1 << 16  # nominal alphabet size for the unigram floor


def _codes(text: str) -> np.ndarray:
    """Lower-cased, digit-folded, whitespace-collapsed code points (uint64), space-padded."""
    text = _WS.sub(" ", _DIGITS.sub("0", text.lower())).strip()
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)


class CharNgramLM:
    """Hashed character n-gram LM; `perplexity(text)` is per character."""

    def __init__(self, texts: list[str], order: int = 3, buckets_log2: int = 20):
        self.order, self.mask = order, np.uint64((1 << buckets_log2) - 1)
        size = 1 << buckets_log2
        # counts[k]: (k+1)-grams; ctx[k]: their k-character contexts
        self.counts = [np.zeros(size, np.float32) for _ in range(order)]
        self.ctx = [np.zeros(size, np.float32) for _ in range(order)]
        for t in texts:
            c = _codes(t)
            for k in range(order):
                g, h = self._keys(c, k)
                self.counts[k] += np.bincount(g, minlength=size).astype(np.float32)
                self.ctx[k] += np.bincount(h, minlength=size).astype(np.float32)

    def _keys(self, c: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Bucket of each (k+1)-gram ending at positions k.. and of its k-char context."""
        m = len(c) - k
        if m <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        h = np.full(m, np.uint64(k + 1))
        with np.errstate(over="ignore"):
            for j in range(k):
                h = (h * _PRIMES[j % len(_PRIMES)]) ^ c[j : j + m]
            g = (h * _PRIMES[-1]) ^ c[k : k + m]
        return (g & self.mask).astype(np.int64), (h & self.mask).astype(np.int64)

    def log_probs(self, text: str) -> np.ndarray:
        """Natural-log probability of each character (from position order-1 on)."""
        c = _codes(text)
        n = len(c) - (self.order - 1)
        if n <= 0:
            return np.zeros(0)
        p = None
        for k in range(self.order):
            g, h = self._keys(c, k)
            g, h = g[-n:], h[-n:]
            num, den = self.counts[k][g].astype(np.float64), self.ctx[k][h].astype(np.float64)
            if k == 0:
                total = float(self.ctx[0].sum())
                p = (num + 1.0) / (total + VOCAB)
            else:
                p = (num + BETA * p) / (den + BETA)
        return np.log(p)

    def perplexity(self, text: str) -> float:
        """exp(mean negative log-probability per character); inf for empty text."""
        lp = self.log_probs(text)
        return float(np.exp(-lp.mean())) if len(lp) else float("inf")


def reference_texts(cfg: QualityConfig) -> list[str]:
    """The reference corpus: `cfg.reference` files, else the shipped assets."""
    paths = [Path(p) for p in cfg.reference] or [ASSETS / n for n in DEFAULT_REFERENCE]
    return [p.read_text(encoding="utf-8") for p in paths]


def scorer_for(cfg: QualityConfig) -> CharNgramLM:
    """The LM for a quality config (trained once per process)."""
    return _scorer(cfg.reference, cfg.order, cfg.buckets_log2)


@functools.lru_cache(maxsize=4)
def _scorer(reference: tuple[str, ...], order: int, buckets_log2: int) -> CharNgramLM:
    cfg = QualityConfig(reference=reference)
    return CharNgramLM(reference_texts(cfg), order, buckets_log2)


def quality_filter(doc: dict, cfg: QualityConfig, lm: CharNgramLM) -> str | None:
    """Set ``doc["ppl"]``; drop when above the threshold of the document's language."""
    ppl = lm.perplexity(doc["text"][: cfg.max_chars])
    doc["ppl"] = round(ppl, 2)
    limit = cfg.max_ppl.get(doc.get("lang", ""), cfg.default_max_ppl)
    return "high_perplexity" if ppl > limit else None
