"""Deduplication: exact (normalized hash), near-duplicate (MinHash LSH, datasketch) at
document level, and line-level boilerplate removal across documents.

Signatures are computed per document in the workers (`signatures`); the global passes
(`DedupIndex`, `line_counts` / `strip_lines`) run once over all documents in input order,
so the first document of a duplicate group is the one kept, independently of how the
work was split.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter

import numpy as np
import xxhash

from puyu_jax.data import text as T
from puyu_jax.data.config import DedupConfig

SCHEME = "affine32"  # datasketch's permutation scheme (32-bit input hashes)


def normalized_key(text: str) -> str:
    """Exact-dup key: sha1 of the lower-cased words joined by spaces (punctuation, case
    and whitespace differences do not matter)."""
    return hashlib.sha1(" ".join(T.words(text.lower())).encode("utf-8")).hexdigest()


def shingles(text: str, n: int) -> set[bytes]:
    """Word n-grams (CJK: character n-grams) of the lower-cased text."""
    ws = T.words(text.lower())
    if len(ws) < n:
        return {" ".join(ws).encode("utf-8")}
    return {" ".join(ws[i : i + n]).encode("utf-8") for i in range(len(ws) - n + 1)}


@functools.lru_cache(maxsize=4)
def _template(num_perm: int, seed: int):
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest, scheme=SCHEME)


def minhash(text: str, cfg: DedupConfig) -> np.ndarray:
    """MinHash signature (``bands * rows`` uint64 values) of the document's shingles."""
    from datasketch import MinHash

    t = _template(cfg.bands * cfg.rows, cfg.seed)
    m = MinHash(num_perm=t.hashvalues.size, seed=cfg.seed, hashfunc=xxhash.xxh32_intdigest,
                permutations=t.permutations, scheme=SCHEME)
    m.update_batch(list(shingles(text, cfg.ngram)))
    return m.hashvalues


def line_key(line: str) -> int:
    """64-bit hash of a stripped line."""
    return xxhash.xxh64_intdigest(line.strip().encode("utf-8"))


def signatures(text: str, cfg: DedupConfig) -> dict:
    """Everything the global dedup passes need about one document."""
    sig: dict = {}
    if cfg.exact:
        sig["exact"] = normalized_key(text)
    if cfg.near:
        sig["minhash"] = minhash(text, cfg)
    if cfg.line_min_docs:
        sig["lines"] = sorted({line_key(l) for l in T.lines(text) if len(l) >= cfg.line_min_chars})
    return sig


class DedupIndex:
    """Online document dedup in input order: `check(doc_id, sig)` returns None for a new
    document (which is then indexed) or (reason, id of the earlier document)."""

    def __init__(self, cfg: DedupConfig):
        from datasketch import MinHashLSH

        self.cfg = cfg
        self.exact: dict[str, str] = {}
        self.lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.bands * cfg.rows, params=(cfg.bands, cfg.rows)) if cfg.near else None
        self.sigs: list[np.ndarray] = []
        self.ids: list[str] = []

    def check(self, doc_id: str, sig: dict) -> tuple[str, str] | None:
        if self.cfg.exact and sig["exact"] in self.exact:
            return "exact_duplicate", self.exact[sig["exact"]]
        if self.lsh is not None:
            from datasketch import LeanMinHash

            hv = sig["minhash"]
            m = LeanMinHash(seed=self.cfg.seed, hashvalues=hv, scheme=SCHEME)
            cands = sorted(self.lsh.query(m))
            best = None
            for c in cands:
                j = float(np.mean(self.sigs[c] == hv))
                if j >= self.cfg.threshold:
                    best = c
                    break
            if best is not None:
                return "near_duplicate", self.ids[best]
            key = len(self.sigs)
            self.sigs.append(hv)
            self.ids.append(doc_id)
            self.lsh.insert(key, m, check_duplication=False)
        if self.cfg.exact:
            self.exact[sig["exact"]] = doc_id
        return None


def line_counts(sigs: list[dict]) -> Counter:
    """In how many documents each line hash occurs."""
    c: Counter = Counter()
    for s in sigs:
        c.update(s.get("lines", ()))
    return c


def strip_lines(text: str, boiler: set[int], min_chars: int) -> tuple[str, int]:
    """`text` without its boilerplate lines, and how many lines were removed."""
    out, removed = [], 0
    for line in text.split("\n"):
        s = line.strip()
        if len(s) >= min_chars and line_key(s) in boiler:
            removed += 1
        else:
            out.append(line)
    return "\n".join(out).strip(), removed
