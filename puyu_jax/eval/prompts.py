"""Prompt templates: a row -> the prompt (text for the base meta template, chat messages
for the chat one) and, for option scoring, the (label, continuation, option text) triples.

Templates are Python format strings over the row's columns, with one addition: a list column
can be joined, `{keywords:join=, }` (the separator is everything after `join=`)."""

from __future__ import annotations

import string

from puyu_jax.eval.config import DatasetError, PromptConfig
from puyu_jax.eval.datasets import Dataset

Prompt = str | list[dict]


class _Formatter(string.Formatter):
    def format_field(self, value, format_spec: str):
        if format_spec.startswith("join="):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"':join=' needs a list column, got {type(value).__name__}")
            return format_spec[len("join="):].join(str(x) for x in value)
        return super().format_field("" if value is None else value, format_spec)


_FORMATTER = _Formatter()


def fields(row: dict) -> dict:
    """The row's columns plus `answer_text` (the gold option's text) where there are options."""
    out = dict(row)
    opts, ans = row.get("options"), str(row.get("answer", ""))
    if isinstance(opts, list) and ans.isdigit() and int(ans) < len(opts):
        out["answer_text"] = opts[int(ans)]
    return out


def fill(template: str, row: dict, key: str = "template") -> str:
    """`template` formatted with the row's columns, naming the config key and the missing
    column on error (a DatasetError, one line)."""
    try:
        return _FORMATTER.vformat(template, (), fields(row))
    except KeyError as e:
        cols = ", ".join(sorted(k for k in row if not k.startswith("_")))
        raise DatasetError(f"prompt.{key} {template[:60]!r} uses column {e}, which the rows lack "
                           f"(columns: {cols})") from None
    except (IndexError, ValueError, AttributeError, TypeError) as e:
        raise DatasetError(f"prompt.{key} {template[:60]!r}: {e}") from None


def examples(ds: Dataset, row: dict) -> list[dict]:
    """The in-context examples of a row: dev rows (optionally sharing `match_column`) at fixed ids."""
    fs = ds.cfg.prompt.few_shot
    if not fs.ids:
        return []
    pool = ds.dev if fs.split == "dev" else ds.test
    if not pool or pool is ds.test:  # no dev split: the other test rows (lm-eval's fallback)
        pool = [r for r in ds.test if r["_id"] != row.get("_id")]
    if fs.match_column:
        pool = [r for r in pool if r.get(fs.match_column) == row.get(fs.match_column)]
    bad = [i for i in fs.ids if i >= len(pool)]
    if bad:
        raise DatasetError(f"dataset {ds.cfg.name!r}: prompt.few_shot.ids {bad} out of range "
                           f"({len(pool)} {fs.split} rows{' for this ' + fs.match_column if fs.match_column else ''})")
    return [pool[i] for i in fs.ids]


def _example_answer(ds: Dataset, ex: dict, meta: str) -> str:
    """An in-context example's answer: `answer_template`, else the gold option's continuation
    (option scoring), else " " + the gold column."""
    p = ds.cfg.prompt
    if p.few_shot.answer_template:
        return fill(p.few_shot.answer_template, ex, "few_shot.answer_template")
    if ds.cfg.inferencer.type != "gen":
        gold = ds.gold(ex)
        for label, c, _ in options(ds, ex, "base"):
            if label == gold:
                return c
        raise DatasetError(f"few-shot example {ex.get('_id', '')}: gold answer {gold!r} is no option label")
    return " " + ds.gold(ex)


def build_prompt(ds: Dataset, row: dict, meta: str = "") -> Prompt:
    """The prompt of a row under the meta template `meta` ("" = the dataset's own)."""
    p: PromptConfig = ds.cfg.prompt
    meta = meta or p.meta
    shots = examples(ds, row)
    instruction = fill(p.instruction, row, "instruction") if p.instruction else ""
    answer = lambda ex: _example_answer(ds, ex, meta)  # noqa: E731
    if meta == "base":
        parts = [fill(p.template, ex) + answer(ex) for ex in shots]
        body = p.few_shot.separator.join([*parts, fill(p.template, row)])
        return instruction + body
    messages: list[dict] = []
    if instruction and p.system:
        messages.append({"role": "system", "content": instruction.strip()})
    prefix = instruction if instruction and not p.system else ""
    for ex in shots:
        messages.append({"role": "user", "content": prefix + fill(p.template, ex)})
        messages.append({"role": "assistant", "content": answer(ex).strip()})
        prefix = ""
    messages.append({"role": "user", "content": prefix + fill(p.template, row)})
    return messages


def options(ds: Dataset, row: dict, meta: str = "") -> list[tuple[str, str, str]]:
    """(label, continuation, option text) for every option of a row.

    The option text is what lm-eval's `acc_norm` divides by: the list item itself for
    `options_column`, the continuation without its leading space for `continuations`.
    Chat prompts drop the continuation's leading space."""
    p = ds.cfg.prompt
    if p.continuations:
        out = []
        for label, t in p.continuations.items():
            c = fill(t, row, f"continuations.{label}")
            out.append((label, c, c[1:] if c.startswith(" ") else c))
    elif p.options_column:
        opts = row.get(p.options_column)
        if not isinstance(opts, (list, tuple)):
            raise DatasetError(f"dataset {ds.cfg.name!r}: prompt.options_column={p.options_column!r} must name a "
                               f"list column, got {type(opts).__name__}")
        if p.option_labels and len(opts) > len(p.option_labels):
            raise DatasetError(f"dataset {ds.cfg.name!r}: {len(opts)} options but prompt.option_labels="
                               f"{p.option_labels!r}")
        out = []
        for i, o in enumerate(opts):
            label = p.option_labels[i] if p.option_labels else str(i)
            out.append((label, fill(p.continuation, {**row, "option": o, "label": label}, "continuation"), str(o)))
    else:
        raise DatasetError(f"dataset {ds.cfg.name!r}: option scoring needs prompt.continuations or "
                           "prompt.options_column")
    if (meta or p.meta) == "chat":
        out = [(label, c.lstrip(), t) for label, c, t in out]
    return out


def continuations(ds: Dataset, row: dict, meta: str = "") -> list[tuple[str, str]]:
    """(label, continuation text) for every option of a row (see `options`)."""
    return [(label, c) for label, c, _ in options(ds, row, meta)]
