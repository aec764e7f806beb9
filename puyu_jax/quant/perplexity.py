"""Perplexity of a model on a text: the figure used to compare float and quantized models.

The text is tokenized once (the tokenizer's own BOS handling) and cut into non-overlapping
windows of `seq_len` tokens; each window is scored on its own (no context carried across
windows), so a window predicts its tokens 1..seq_len-1. A last, shorter window is kept
(padded to `seq_len` and masked), so every window has one shape and the scorer compiles
once. Perplexity = exp(mean NLL over all predicted tokens).

With `kv="int8"` (or "auto") the windows are scored by the serving engine's
`puyu_jax.serve.runner.score_logprobs`, through its paged KV cache in that dtype.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from puyu_jax.models.logprobs import token_logprobs
from puyu_jax.serve.config import KV_DTYPES

ASSETS = Path(__file__).resolve().parent / "assets"
HELDOUT_FILE = ASSETS / "heldout_wiki.txt"


@dataclass
class PerplexityResult:
    ppl: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens
    windows: int
    seq_len: int

    def as_dict(self) -> dict:
        return asdict(self)


def text_token_ids(tokenizer, text: str) -> np.ndarray:
    """The text's token ids, int32 [n]."""
    return np.asarray(tokenizer.encode(text), np.int32)


def windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [w, seq_len], valid bool [w, seq_len]): non-overlapping, last one padded."""
    ids = np.asarray(ids, np.int32).reshape(-1)
    n = len(ids)
    w = n // seq_len + (1 if n % seq_len >= 2 else 0)
    if w == 0:
        raise ValueError(f"{n} tokens: too few to score")
    tokens = np.zeros((w, seq_len), np.int32)
    valid = np.zeros((w, seq_len), bool)
    for i in range(w):
        chunk = ids[i * seq_len : (i + 1) * seq_len]
        tokens[i, : len(chunk)] = chunk
        valid[i, : len(chunk)] = True
    return tokens, valid


@functools.partial(jax.jit, static_argnums=0)
def _nll_sum(graphdef, state, tokens, valid):
    """(sum of NLL, count) over the predicted tokens of a batch of windows."""
    model = nnx.merge(graphdef, state)
    logits, _ = model(tokens)
    logprob, _ = token_logprobs(logits[:, :-1], tokens[:, 1:])
    nll = -logprob
    mask = valid[:, 1:]
    return jnp.sum(jnp.where(mask, nll, 0.0)), jnp.sum(mask)


def perplexity(
    model,
    ids: np.ndarray,
    *,
    seq_len: int = 512,
    batch_size: int = 4,
    max_windows: int | None = None,
    kv: str | None = None,
    progress: bool = True,
    desc: str = "perplexity",
) -> PerplexityResult:
    """Perplexity of `model` on token ids.

    Args:
      model: a Transformer (float or int4).
      ids: int [n] token ids of the whole text.
      seq_len: window length.
      batch_size: windows per forward (the last batch is padded with masked rows).
      max_windows: score only the first windows (quick looks).
      kv: None for the plain forward; "auto" or "int8" to score through the serving
        engine's paged KV cache in that dtype.
      progress: show a progress bar.
    """
    from tqdm import tqdm

    tokens, valid = windows(ids, seq_len)
    if max_windows:
        tokens, valid = tokens[:max_windows], valid[:max_windows]
    w = len(tokens)
    total, count = 0.0, 0
    bar = tqdm(total=w, desc=desc, unit="win", disable=not progress, leave=False)
    if kv is not None:
        if kv not in KV_DTYPES:
            raise ValueError(f"kv={kv!r}: expected one of {KV_DTYPES}")
        from puyu_jax.serve.runner import score_logprobs

        for i in range(w):
            row = tokens[i][valid[i]]
            logp = np.asarray(score_logprobs(model, row, kv_dtype=kv, block_size=16), np.float64)
            total -= float(logp.sum())
            count += len(row) - 1
            bar.update(1)
    else:
        graphdef, state = nnx.split(model)
        pad = (-w) % batch_size
        tokens = np.concatenate([tokens, np.zeros((pad, seq_len), np.int32)])
        valid = np.concatenate([valid, np.zeros((pad, seq_len), bool)])
        for i in range(0, len(tokens), batch_size):
            s, c = _nll_sum(graphdef, state, jnp.asarray(tokens[i : i + batch_size]), jnp.asarray(valid[i : i + batch_size]))
            total += float(s)
            count += int(c)
            bar.update(min(batch_size, w - i))
    bar.close()
    nll = total / count
    return PerplexityResult(ppl=math.exp(nll), nll=nll, tokens=count, windows=w, seq_len=seq_len)


def heldout_text() -> str:
    """The shipped held-out Wikipedia text (see assets/README.md)."""
    return HELDOUT_FILE.read_text(encoding="utf-8")
