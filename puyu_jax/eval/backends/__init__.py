"""Model backends for eval. A backend is any object with

    name: str                                    # identity for the prediction cache
    loglikelihood(requests) -> list[Score]       # requests: [(prompt, continuation)]
    generate(prompts, max_out_len, stops) -> list[str]

A prompt is a text (base meta template) or a list of chat messages (chat meta template).
`LocalBackend` runs a puyu model in-process; `OpenAIBackend` talks to any OpenAI-compatible
URL; `GoldBackend` / `ConstantBackend` are sanity checks (100% and chance).

Option scoring needs only `Score` per (prompt, continuation): the inferencer derives lm-eval's
acc / acc_norm and OpenCompass' mean-NLL choice from `logprob` and `tokens` itself.
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


def make_backend(spec: ModelSpec, dataset=None):
    """The backend a ModelSpec describes (loads a local model's weights).

    The gold backend knows one dataset's answers: pass its `DatasetConfig` (or `Dataset`)."""
    if spec.type == "openai":
        from puyu_jax.eval.backends.openai import OpenAIBackend

        return OpenAIBackend(spec.url, model=spec.model, api_key=spec.api_key, concurrency=spec.concurrency,
                             batch_size=spec.batch_size)
    if spec.type in ("gold", "constant"):
        from puyu_jax.eval.backends.checks import ConstantBackend, GoldBackend
        from puyu_jax.eval.datasets import Dataset, load_dataset

        if spec.type == "constant":
            return ConstantBackend(spec.path if spec.path and spec.path != "smollm2" else "A")
        if dataset is None:
            raise ValueError("the gold backend needs the dataset it answers")
        return GoldBackend(dataset if isinstance(dataset, Dataset) else load_dataset(dataset), meta=spec.meta)
    from puyu_jax.eval.backends.local import LocalBackend

    return LocalBackend.from_source(spec.path, dtype=spec.dtype, batch_size=spec.batch_size,
                                    max_seq_len=spec.max_seq_len)


__all__ = ["Backend", "Score", "make_backend", "truncate_at"]
