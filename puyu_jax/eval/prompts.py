"""Prompt templates: a row -> the prompt (text for the base meta template, chat messages
for the chat one) and, for option scoring, the (label, continuation) pairs."""

from __future__ import annotations

from puyu_jax.eval.config import PromptConfig
from puyu_jax.eval.datasets import Dataset

Prompt = str | list[dict]


def fields(row: dict) -> dict:
    """The row's columns plus `answer_text` (the gold option's text) where there are options."""
    out = dict(row)
    opts, ans = row.get("options"), str(row.get("answer", ""))
    if isinstance(opts, list) and ans.isdigit() and int(ans) < len(opts):
        out["answer_text"] = opts[int(ans)]
    return out


def fill(template: str, row: dict) -> str:
    """`template.format(**row)`, naming the missing column on error."""
    try:
        return template.format_map(fields(row))
    except KeyError as e:
        raise ValueError(f"template {template!r} uses column {e} which the row lacks (columns: {sorted(row)})") from e


def examples(ds: Dataset, row: dict) -> list[dict]:
    """The in-context examples of a row: dev rows (optionally sharing `match_column`) at fixed ids."""
    fs = ds.cfg.prompt.few_shot
    if not fs.ids:
        return []
    pool = ds.dev if fs.split == "dev" else ds.test
    if fs.match_column:
        pool = [r for r in pool if r.get(fs.match_column) == row.get(fs.match_column)]
    bad = [i for i in fs.ids if i >= len(pool)]
    if bad:
        raise ValueError(f"dataset {ds.cfg.name!r}: few-shot ids {bad} out of range ({len(pool)} {fs.split} rows)")
    return [pool[i] for i in fs.ids]


def build_prompt(ds: Dataset, row: dict, meta: str = "") -> Prompt:
    """The prompt of a row under the meta template `meta` ("" = the dataset's own)."""
    p: PromptConfig = ds.cfg.prompt
    meta = meta or p.meta
    shots = examples(ds, row)
    instruction = fill(p.instruction, row) if p.instruction else ""
    if meta == "base":
        parts = [fill(p.template, ex) + fill(p.few_shot.answer_template, ex) for ex in shots]
        body = p.few_shot.separator.join([*parts, fill(p.template, row)])
        return instruction + body
    messages: list[dict] = []
    if instruction and p.system:
        messages.append({"role": "system", "content": instruction.strip()})
    prefix = instruction if instruction and not p.system else ""
    for ex in shots:
        messages.append({"role": "user", "content": prefix + fill(p.template, ex)})
        messages.append({"role": "assistant", "content": fill(p.few_shot.answer_template, ex).strip()})
        prefix = ""
    messages.append({"role": "user", "content": prefix + fill(p.template, row)})
    return messages


def continuations(ds: Dataset, row: dict, meta: str = "") -> list[tuple[str, str]]:
    """(label, continuation text) for every option of a row; chat prompts drop the leading space."""
    p = ds.cfg.prompt
    if p.continuations:
        pairs = [(label, fill(t, row)) for label, t in p.continuations.items()]
    elif p.options_column:
        pairs = [(str(i), fill(p.continuation, {**row, "option": o})) for i, o in enumerate(row[p.options_column])]
    else:
        raise ValueError(f"dataset {ds.cfg.name!r}: option scoring needs prompt.continuations or prompt.options_column")
    if (meta or p.meta) == "chat":
        pairs = [(label, c.lstrip()) for label, c in pairs]
    return pairs
