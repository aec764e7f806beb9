"""Chat template, assistant-only loss mask, packing and the SFT loader.

A conversation is rendered with the model's chat template; the character spans that
belong to trained messages (by default every assistant message, tool-call markup and
turn-end token included, the assistant header excluded) are found by rendering
prefixes of the conversation, and the text is tokenized span by span so every token
is either trained or not. Plain documents (incremental pretraining) are trained whole.

Batch rows (int32 [seq_len] each): tokens, segment_ids (0 = padding, documents 1..),
positions (restart at 0 per document) and loss_mask, where ``loss_mask[t] = 1`` iff
token t is a training target (predicted from tokens < t of its document). The train
step ANDs it with the packing mask (same segment, not the first token of a document).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import grain
import numpy as np

from puyu_jax.chat_templates import ROLES, TEMPLATES, render_chat
from puyu_jax.finetune.formats import FormatError, RecordError, Sample, load_dataset

BATCH_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")


def resolve_template(tokenizer, model_chat_template: str = "plain", name: str = "") -> str:
    """A template name (TEMPLATES) or jinja source: `name`, else the tokenizer's own
    chat template, else the model config's `chat_template`."""
    if name:
        return name
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    return model_chat_template


def supports_tool_calls(template: str) -> bool:
    """Whether the template renders assistant `tool_calls` itself."""
    return template == "internlm2" or (template not in TEMPLATES and "tool_calls" in template)


def adapt_messages(sample: Sample, template: str) -> list[dict]:
    """Messages as the template can render them: templates without tool markup get tool
    calls as ``<tool_call>{json}</tool_call>`` text (Hermes style), tool schemas appended to
    the system message, and tool results as a `tool` turn (or `user`, where unknown)."""
    msgs = [dict(m) for m in sample.messages]
    if supports_tool_calls(template):
        return msgs
    roles = ROLES.get(template, frozenset({"system", "user", "assistant", "tool"}))
    out = []
    for m in msgs:
        calls = m.pop("tool_calls", None)
        if calls:
            text = "".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                          "arguments": json.loads(c["function"]["arguments"])},
                                                         ensure_ascii=False) + "\n</tool_call>" for c in calls)
            m["content"] = (m["content"] + "\n" if m["content"] else "") + text
        if m["role"] == "tool" and "tool" not in roles:
            m = {**m, "role": "user", "content": "<tool_response>\n" + m["content"] + "\n</tool_response>"}
        out.append(m)
    if sample.tools:
        spec = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in sample.tools)
        text = f"You may call these tools:\n<tools>\n{spec}\n</tools>"
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text, "train": False})
    return out


def _render(template: str, msgs: list[dict], tools, gen: bool, variables: dict) -> str:
    clean = [{k: v for k, v in m.items() if k != "train"} for m in msgs]
    return render_chat(template, clean, add_generation_prompt=gen, tools=tools, **variables)


def trained_spans(template: str, msgs: list[dict], tools=None, variables: dict | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(rendered text, [(start, end)] character spans of trained messages, trailing whitespace
    excluded)."""
    variables = variables or {}
    tools = tools if supports_tool_calls(template) else None
    full = _render(template, msgs, tools, False, variables)
    spans = []
    for i, m in enumerate(msgs):
        if not m.get("train"):
            continue
        end = _render(template, msgs[: i + 1], tools, False, variables)
        start = None
        for gen in ((True, False) if m["role"] == "assistant" else (False,)):
            prefix = _render(template, msgs[:i], tools, gen, variables) if i else (
                _render(template, [], tools, gen, variables) if gen else "")
            if end.startswith(prefix):
                start = len(prefix)
                break
        if start is None or not full.startswith(end):
            raise FormatError(f"the chat template does not render message {i} as a prefix of the conversation; "
                              "its trained span cannot be located")
        stop = len(end)
        while stop > start and end[stop - 1].isspace():  # the newline after a turn-end token is not trained
            stop -= 1
        if stop > start:
            spans.append((start, stop))
    return full, spans


def encode_sample(tokenizer, template: str, sample: Sample) -> tuple[list[int], list[int]]:
    """(token ids, per-token loss mask) of a sample. Documents get BOS (when the
    tokenizer uses one) and EOS and are trained whole."""
    if sample.is_text:
        ids = tokenizer.encode(sample.text, add_bos=tokenizer.bos_id is not None and tokenizer.add_bos)
        if tokenizer.eos_id is not None:
            ids.append(tokenizer.eos_id)
        return ids, [1] * len(ids)
    variables = {n: getattr(tokenizer, n) or "" for n in ("bos_token", "eos_token", "pad_token", "unk_token")}
    text, spans = trained_spans(template, adapt_messages(sample, template), sample.tools, variables)
    cuts = sorted({0, len(text), *(c for s in spans for c in s)})
    ids: list[int] = []
    mask: list[int] = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        piece = tokenizer.encode(text[a:b], add_bos=False, allow_special=True)
        train = any(s <= a and b <= e for s, e in spans)
        ids += piece
        mask += [int(train)] * len(piece)
    bos = tokenizer.bos_token
    if tokenizer.add_bos and tokenizer.bos_id is not None and not (bos and text.startswith(bos)):
        ids, mask = [tokenizer.bos_id, *ids], [0, *mask]
    return ids, mask


@dataclass
class SFTStats:
    records: int = 0
    bad_records: int = 0
    samples: int = 0
    truncated: int = 0
    dropped: int = 0  # no trained token left within seq_len
    tokens: int = 0
    trained_tokens: int = 0
    sequences: int = 0
    fill: float = 0.0  # non-padding fraction of the packed sequences
    formats: dict = field(default_factory=dict)
    errors: list[RecordError] = field(default_factory=list)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "errors"}


def encode_samples(tokenizer, template: str, samples: list[Sample], seq_len: int,
                   stats: SFTStats) -> list[tuple[np.ndarray, np.ndarray]]:
    """Tokenized, truncated (to seq_len) examples; bad ones recorded in `stats`."""
    out = []
    for s in samples:
        try:
            ids, mask = encode_sample(tokenizer, template, s)
        except FormatError as e:
            stats.errors.append(RecordError(s.source, "template", str(e)))
            stats.dropped += 1
            continue
        if len(ids) > seq_len:
            stats.truncated += 1
            ids, mask = ids[:seq_len], mask[:seq_len]
        if sum(mask[1:]) == 0:
            stats.dropped += 1
            stats.errors.append(RecordError(s.source, "template", f"no trained token within seq_len={seq_len}"))
            continue
        out.append((np.asarray(ids, np.int32), np.asarray(mask, np.int32)))
        stats.tokens += len(ids)
        stats.trained_tokens += int(sum(mask[1:]))
    stats.samples = len(out)
    return out


def pack_examples(examples: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int,
                  pack: bool = True) -> np.ndarray:
    """Greedy in-order packing into int32 [n, 4, seq_len] rows (tokens, segment_ids,
    positions, loss_mask); with pack=False one example per row."""
    rows: list[np.ndarray] = []
    cur: list[tuple[np.ndarray, np.ndarray]] = []
    used = 0

    def flush():
        row = np.zeros((4, seq_len), np.int32)
        row[0] = pad_id
        at = 0
        for seg, (ids, mask) in enumerate(cur, 1):
            n = len(ids)
            row[0, at:at + n], row[1, at:at + n], row[2, at:at + n], row[3, at:at + n] = ids, seg, np.arange(n), mask
            at += n
        rows.append(row)

    for ids, mask in examples:
        if cur and (not pack or used + len(ids) > seq_len):
            flush()
            cur, used = [], 0
        cur.append((ids, mask))
        used += len(ids)
    if cur:
        flush()
    return np.stack(rows) if rows else np.zeros((0, 4, seq_len), np.int32)


def build_sft_data(path: str, tokenizer, template: str, *, seq_len: int, fmt: str = "auto", pack: bool = True,
                   seed: int = 0, system: str = "", substitutions: dict | None = None) -> tuple[np.ndarray, SFTStats]:
    """Dataset file -> packed rows [n, 4, seq_len] and statistics (bad records listed)."""
    res = load_dataset(path, fmt, system=system, substitutions=substitutions)
    stats = SFTStats(records=res.n_records, bad_records=len(res.errors), formats=res.formats, errors=list(res.errors))
    examples = encode_samples(tokenizer, template, res.samples, seq_len, stats)
    order = np.random.default_rng(seed).permutation(len(examples))
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
    rows = pack_examples([examples[i] for i in order], seq_len, pad, pack)
    stats.sequences = len(rows)
    stats.fill = float((rows[:, 1] > 0).mean()) if len(rows) else 0.0
    return rows, stats


def sft_loader(rows: np.ndarray, batch_size: int, seed: int, shard_index: int = 0, shard_count: int = 1):
    """Checkpointable grain iterator of batches {tokens, segment_ids, positions, loss_mask}
    (int32 [batch_size // shard_count, seq_len]); shuffled, repeated forever."""
    from puyu_jax.data.loader import batched_loader

    if len(rows) < batch_size // shard_count:
        reps = -(-(batch_size // shard_count) // max(len(rows), 1))
        rows = np.concatenate([rows] * reps)
    ds = grain.MapDataset.source(rows).map(lambda r: dict(zip(BATCH_KEYS, r)))
    return batched_loader(ds, batch_size=batch_size // shard_count, seed=seed,
                          shard_index=shard_index, shard_count=shard_count)


def preview(tokenizer, ids, mask, *, markup: bool = False) -> str:
    """The decoded tokens with trained spans marked: ``⟦...⟧`` (plain) or rich markup."""
    out, run, cur = [], [], None

    def flush():
        if not run:
            return
        text = tokenizer.decode(run)
        if markup:
            from rich.markup import escape

            text = escape(text)
            out.append(f"[bold green]{text}[/bold green]" if cur else f"[dim]{text}[/dim]")
        else:
            out.append(f"⟦{text}⟧" if cur else text)

    for i, m in zip(ids, mask):
        if bool(m) != cur:
            flush()
            run, cur = [], bool(m)
        run.append(int(i))
    flush()
    return "".join(out)
