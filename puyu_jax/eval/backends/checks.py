"""Sanity-check backends: `GoldBackend` answers the gold answer (every dataset scores 100%),
`ConstantBackend` answers the same thing whatever it is asked (every dataset scores chance).
Together they prove loading, prompting, extraction and scoring end to end."""

from __future__ import annotations

import json
from collections.abc import Sequence

from puyu_jax.eval.backends import Score
from puyu_jax.eval.config import DatasetConfig, DatasetError
from puyu_jax.eval.datasets import Dataset
from puyu_jax.eval.prompts import build_prompt, continuations


def _key(prompt) -> str:
    """Prompts are matched by their last user turn (multi-turn rounds) or their text."""
    if isinstance(prompt, list):
        users = [m["content"] for m in prompt if m["role"] == "user"]
        return users[-1] if users else json.dumps(prompt, sort_keys=True)
    return prompt


def check_gold_answerable(cfg: DatasetConfig) -> None:
    """A generation dataset without a gold column (IFEval: instructions checked on the response,
    no reference answer) cannot be answered by the gold backend: a one-line error, not a 0.

    Raises:
      DatasetError: naming the dataset and what to use instead.
    """
    if cfg.inferencer.type == "gen" and not cfg.inferencer.multi_turn and not cfg.reader.output_column:
        raise DatasetError(f"dataset {cfg.name!r} has no reference answers (reader.output_column is empty; "
                           f"evaluator {cfg.evaluator.type!r} checks the response itself): the gold backend cannot "
                           "answer it; check it with --model constant[:TEXT] or a real model")


class GoldBackend:
    """Knows the gold answer of every row of a dataset.

    Scoring gives the gold option log-prob 0 and every other option -100; generation returns
    the gold column (the GSM8K solution, the HumanEval canonical solution, the CMRC answer),
    and for multi-turn rows the reference answer of each turn. A dataset without reference
    answers (IFEval) is refused with a DatasetError (see `check_gold_answerable`).
    """

    def __init__(self, ds: Dataset, meta: str = ""):
        check_gold_answerable(ds.cfg)
        self.name = f"gold:{ds.cfg.name}"
        self.gold_pairs: set[tuple[str, str]] = set()
        self.reply: dict[str, str] = {}
        inf = ds.cfg.inferencer
        for row in ds.test:
            if inf.type != "gen":
                opts = dict(continuations(ds, row, meta))
                self.gold_pairs.add((_key(build_prompt(ds, row, meta)), opts[ds.gold(row)]))
            elif inf.multi_turn:
                refs = row.get("reference") or []
                for k, turn in enumerate(row["turns"]):
                    good = k < len(refs) and refs[k].strip()
                    self.reply[turn] = refs[k] if good else f"A careful, complete answer to: {turn}"
            else:
                self.reply[_key(build_prompt(ds, row, meta))] = ds.gold(row)

    def loglikelihood(self, requests: Sequence[tuple]) -> list[Score]:
        return [Score(0.0 if (_key(p), c) in self.gold_pairs else -100.0, 1, True) for p, c in requests]

    def generate(self, prompts: Sequence, max_out_len: int, stops: Sequence[str] = ()) -> list[str]:
        return [self.reply[_key(p)] for p in prompts]


class ConstantBackend:
    """The same log-prob for every continuation (ties go to the first option) and the same text."""

    def __init__(self, text: str = "A", logprob: float = 0.0):
        self.text, self.logprob = text, logprob
        self.name = f"constant:{text}:{logprob}"

    def loglikelihood(self, requests: Sequence[tuple]) -> list[Score]:
        return [Score(self.logprob, 1, False) for _ in requests]

    def generate(self, prompts: Sequence, max_out_len: int, stops: Sequence[str] = ()) -> list[str]:
        return [self.text for _ in prompts]
