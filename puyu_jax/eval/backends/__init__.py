"""Model backends for eval. A backend is any object with

    name: str                                    # identity for the prediction cache
    loglikelihood(requests) -> list[Score]       # requests: [(prompt, continuation)]
    generate(prompts, max_out_len, stops) -> list[str]

A prompt is a text (base meta template) or a list of chat messages (chat meta template).
`LocalBackend` runs a puyu model in-process; `OpenAIBackend` talks to any OpenAI-compatible
URL; `GoldBackend` / `ConstantBackend` are sanity checks (100% and chance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from puyu_jax.eval.config import ModelSpec


class Score(NamedTuple):
    """A continuation's summed log-probability, its token count and whether it is greedy."""

    logprob: float
    tokens: int
    greedy: bool


class Backend(Protocol):
    name: str

    def loglikelihood(self, requests: Sequence[tuple]) -> list[Score]: ...

    def generate(self, prompts: Sequence, max_out_len: int, stops: Sequence[str] = ()) -> list[str]: ...


def truncate_at(text: str, stops: Sequence[str]) -> str:
    """`text` cut before the first occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        i = text.find(s) if s else -1
        if i >= 0:
            cut = min(cut, i)
    return text[:cut]


def make_backend(spec: ModelSpec):
    """The backend a ModelSpec describes (loads a local model's weights)."""
    if spec.type == "openai":
        from puyu_jax.eval.backends.openai import OpenAIBackend

        return OpenAIBackend(spec.url, model=spec.model, api_key=spec.api_key, concurrency=spec.concurrency,
                             batch_size=spec.batch_size)
    from puyu_jax.eval.backends.local import LocalBackend

    return LocalBackend.from_source(spec.path, dtype=spec.dtype, batch_size=spec.batch_size,
                                    max_seq_len=spec.max_seq_len)


__all__ = ["Backend", "Score", "make_backend", "truncate_at"]
