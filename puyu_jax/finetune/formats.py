"""SFT dataset formats -> one message schema.

Every record becomes a `Sample`: OpenAI-style messages plus optional tool schemas,

    {"role": "system" | "user" | "assistant" | "tool", "content": str,
     "tool_calls": [{"type": "function", "function": {"name": str, "arguments": str(JSON)}}],  # assistant only
     "train": bool}                                            # loss on this message (default: assistant)

or, for incremental pretraining, a plain document (`Sample.text`).

Formats (``detect_format`` picks one per record when `format="auto"`):

* ``alpaca``: ``instruction``, optional ``input``, ``output``, optional ``system`` and
  ``history`` ([[user, assistant], ...]).
* ``sharegpt``: ``conversations`` [{"from", "value"}] with from in human/user, gpt/assistant,
  system, function_call (value: JSON ``{"name", "arguments"}``), observation; optional
  ``system`` and ``tools`` (JSON string or list).
* ``openai``: ``messages`` [{"role", "content", "tool_calls"?}] with optional ``tools``; content
  may be a string, OpenAI parts (``{"type": "text", "text"}``) or LLaMA-Factory parts
  (``{"type": "text" | "reasoning" | "tool_call", "value"}``); a message's ``loss_weight``
  (0 or 1) overrides whether it is trained.
* ``moss``: MOSS-003 SFT records: ``meta_instruction`` and ``chat`` {"turn_1": {"Human",
  "Inner Thoughts", "Commands", "Tool Responses", "MOSS"}, ...} with the ``<|Human|>: ... <eoh>``
  markup; commands such as ``Search("query")`` become tool calls, tool responses tool messages.
* ``oasst``: oasst / Guanaco ``text`` of ``### Human: ... ### Assistant: ...`` turns.
* ``text``: plain documents for incremental pretraining (``text`` field, or a .txt file whose
  blank-line-separated paragraphs are the documents).

A record that cannot be converted is a `RecordError` (index + reason), never an exception.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("auto", "alpaca", "sharegpt", "openai", "moss", "oasst", "text")
_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system",
    "function_call": "tool_call", "observation": "tool", "tool": "tool", "function": "tool",
}


class FormatError(ValueError):
    """A record does not fit its format; the message says what is wrong."""


@dataclass
class Sample:
    """One training example: a conversation (`messages`, `tools`) or a plain document (`text`)."""

    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None
    text: str | None = None
    source: int = -1  # record index in the file

    @property
    def is_text(self) -> bool:
        return self.text is not None


@dataclass
class RecordError:
    index: int  # 0-based record (or line) index
    format: str
    reason: str


@dataclass
class LoadResult:
    samples: list[Sample]
    errors: list[RecordError]
    n_records: int
    formats: dict[str, int]  # format -> number of good records


# ----------------------------------------------------------------------------- reading


def read_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(index, record) pairs of a .json (list), .jsonl or .txt file; an unparsable jsonl
    line is yielded as a `FormatError` in place of the record."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {str(path)!r}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        docs = [d.strip() for d in re.split(r"\n\s*\n", text) if d.strip()]
        yield from enumerate({"text": d} for d in docs)
        return
    stripped = text.lstrip()
    if path.suffix == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{path}: not valid JSON ({e})") from e
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        yield from enumerate(data)
        return
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            yield i, FormatError(f"line {i + 1} is not valid JSON: {e.msg} at column {e.colno}")


def detect_format(record: Any) -> str:
    """The format of one record (see the module docstring)."""
    if not isinstance(record, dict):
        raise FormatError(f"a record must be a JSON object, got {type(record).__name__}")
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        return "openai"
    if "chat" in record and isinstance(record["chat"], dict):
        return "moss"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "text" in record:
        t = record["text"]
        return "oasst" if isinstance(t, str) and "### Human:" in t and "### Assistant:" in t else "text"
    raise FormatError(f"unknown record layout with keys {sorted(record)[:8]}: expected instruction/output (alpaca), "
                      "conversations (sharegpt), messages (openai), chat (moss) or text (oasst / plain)")


def load_dataset(path: str | Path, fmt: str = "auto", *, system: str = "",
                 substitutions: dict[str, str] | None = None) -> LoadResult:
    """Reads a dataset file into samples, collecting one `RecordError` per bad record.

    Args:
      path: .json / .jsonl / .txt file.
      fmt: a name in FORMATS; "auto" detects each record's format.
      system: a system message for conversations that have none ("" = none).
      substitutions: literal text replacements applied to every message (e.g. the
        ``{{name}}`` placeholders of LLaMA-Factory's identity data).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {FORMATS}")
    samples, errors, n, counts = [], [], 0, {}
    for i, rec in read_records(path):
        n += 1
        kind = fmt
        try:
            if isinstance(rec, FormatError):
                raise rec
            kind = detect_format(rec) if fmt == "auto" else fmt
            sample = convert_record(rec, kind)
            sample.source = i
            if not sample.is_text:
                if system and not any(m["role"] == "system" for m in sample.messages):
                    sample.messages.insert(0, {"role": "system", "content": system, "train": False})
                validate_messages(sample.messages)
            _substitute(sample, substitutions or {})
        except FormatError as e:
            errors.append(RecordError(i, kind, str(e)))
            continue
        samples.append(sample)
        counts[kind] = counts.get(kind, 0) + 1
    return LoadResult(samples, errors, n, counts)


def _substitute(sample: Sample, subs: dict[str, str]) -> None:
    def sub(s: str) -> str:
        for k, v in subs.items():
            s = s.replace(k, v)
        return s

    if not subs:
        return
    if sample.is_text:
        sample.text = sub(sample.text)
    for m in sample.messages:
        m["content"] = sub(m["content"])


# ----------------------------------------------------------------------------- converters


def convert_record(record: Any, fmt: str) -> Sample:
    """One record of format `fmt` -> a Sample; raises FormatError saying what is wrong."""
    if not isinstance(record, dict):
        raise FormatError(f"a record must be a JSON object, got {type(record).__name__}")
    fn = {"alpaca": _alpaca, "sharegpt": _sharegpt, "openai": _openai, "moss": _moss, "oasst": _oasst,
          "text": _text}.get(fmt)
    if fn is None:
        raise FormatError(f"unknown format {fmt!r}")
    return fn(record)


def _str_field(rec: dict, key: str, *, required: bool = True, where: str = "") -> str:
    v = rec.get(key)
    if v is None:
        if required:
            raise FormatError(f"{where}missing field {key!r}")
        return ""
    if not isinstance(v, str):
        raise FormatError(f"{where}field {key!r} must be a string, got {type(v).__name__}")
    return v


def _msg(role: str, content: str, *, train: bool | None = None, tool_calls: list | None = None) -> dict:
    m = {"role": role, "content": content, "train": role == "assistant" if train is None else train}
    if tool_calls:
        m["tool_calls"] = tool_calls
    return m


def _tool_call(name: Any, arguments: Any, where: str) -> dict:
    if not isinstance(name, str) or not name:
        raise FormatError(f"{where}a tool call needs a non-empty string 'name'")
    if isinstance(arguments, str):
        try:
            json.loads(arguments)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}tool call {name!r}: arguments are not valid JSON ({e.msg})") from e
    elif arguments is None:
        arguments = "{}"
    else:
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _parse_tools(tools: Any) -> list[dict] | None:
    if tools in (None, "", []):
        return None
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise FormatError(f"'tools' is not valid JSON ({e.msg})") from e
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise FormatError("'tools' must be a list of JSON objects (function schemas)")
    for j, t in enumerate(tools):
        fn = t.get("function", t)
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise FormatError(f"tools[{j}] has no function 'name'")
    return tools


def _alpaca(rec: dict) -> Sample:
    instruction = _str_field(rec, "instruction")
    inp = _str_field(rec, "input", required=False)
    output = _str_field(rec, "output")
    if not instruction.strip() and not inp.strip():
        raise FormatError("empty 'instruction' and 'input'")
    if not output.strip():
        raise FormatError("empty 'output' (nothing to train on)")
    msgs = []
    if s := _str_field(rec, "system", required=False):
        msgs.append(_msg("system", s))
    history = rec.get("history") or []
    if not isinstance(history, list):
        raise FormatError("'history' must be a list of [user, assistant] pairs")
    for j, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise FormatError(f"history[{j}] must be a [user, assistant] pair of strings")
        msgs += [_msg("user", pair[0]), _msg("assistant", pair[1])]
    msgs += [_msg("user", f"{instruction}\n\n{inp}" if instruction and inp else instruction or inp),
             _msg("assistant", output)]
    return Sample(msgs)


def _sharegpt(rec: dict) -> Sample:
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise FormatError("'conversations' must be a non-empty list of {from, value} turns")
    msgs = []
    if s := _str_field(rec, "system", required=False):
        msgs.append(_msg("system", s))
    for j, t in enumerate(turns):
        where = f"conversations[{j}]: "
        if not isinstance(t, dict):
            raise FormatError(f"{where}a turn must be an object with 'from' and 'value'")
        src = t.get("from", t.get("role"))
        role = _SHAREGPT_ROLES.get(str(src).lower())
        if role is None:
            raise FormatError(f"{where}unknown 'from' {src!r}; expected one of {sorted(_SHAREGPT_ROLES)}")
        value = _str_field(t, "value" if "value" in t else "content", where=where)
        if role == "tool_call":
            try:
                call = json.loads(value)
            except json.JSONDecodeError as e:
                raise FormatError(f"{where}function_call value is not JSON ({e.msg})") from e
            if not isinstance(call, dict):
                raise FormatError(f"{where}function_call value must be a JSON object with name and arguments")
            tc = _tool_call(call.get("name"), call.get("arguments", call.get("parameters")), where)
            if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1].get("tool_calls"):
                msgs[-1]["tool_calls"] = [tc]  # text then a call in one assistant turn
            else:
                msgs.append(_msg("assistant", "", tool_calls=[tc]))
        else:
            msgs.append(_msg(role, value))
    return Sample(msgs, tools=_parse_tools(rec.get("tools")))


def _content(content: Any, where: str) -> tuple[str, list[dict]]:
    """(text, tool calls) of an OpenAI / LLaMA-Factory message content."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise FormatError(f"{where}'content' must be a string or a list of parts")
    text, reasoning, calls = [], [], []
    for k, p in enumerate(content):
        if not isinstance(p, dict) or "type" not in p:
            raise FormatError(f"{where}content[{k}] must be an object with a 'type'")
        value = p.get("text", p.get("value"))
        if p["type"] == "text":
            text.append(str(value or ""))
        elif p["type"] == "reasoning":
            reasoning.append(str(value or ""))
        elif p["type"] == "tool_call":
            try:
                call = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError as e:
                raise FormatError(f"{where}content[{k}] tool_call is not JSON ({e.msg})") from e
            if not isinstance(call, dict):
                raise FormatError(f"{where}content[{k}] tool_call must be an object with name and arguments")
            calls.append(_tool_call(call.get("name"), call.get("arguments"), where))
        else:
            raise FormatError(f"{where}content[{k}] has unsupported type {p['type']!r} (text, reasoning, tool_call)")
    body = "".join(text)
    if reasoning:
        body = "<think>\n" + "\n".join(reasoning) + "\n</think>\n\n" + body
    return body, calls


def _openai(rec: dict) -> Sample:
    raw = rec.get("messages")
    if not isinstance(raw, list) or not raw:
        raise FormatError("'messages' must be a non-empty list")
    msgs = []
    for j, m in enumerate(raw):
        where = f"messages[{j}]: "
        if not isinstance(m, dict):
            raise FormatError(f"{where}a message must be an object")
        role = m.get("role")
        if role not in ("system", "user", "assistant", "tool", "function"):
            raise FormatError(f"{where}unknown role {role!r}; expected system, user, assistant or tool")
        text, calls = _content(m.get("content"), where)
        for c in m.get("tool_calls") or []:
            fn = c.get("function", c) if isinstance(c, dict) else None
            if not isinstance(fn, dict):
                raise FormatError(f"{where}tool_calls entries must be objects with a 'function'")
            calls.append(_tool_call(fn.get("name"), fn.get("arguments"), where))
        if calls and role != "assistant":
            raise FormatError(f"{where}only assistant messages may carry tool calls")
        train = None
        if "loss_weight" in m:
            train = bool(m["loss_weight"])
        msgs.append(_msg("tool" if role == "function" else role, text, train=train, tool_calls=calls))
    return Sample(msgs, tools=_parse_tools(rec.get("tools")))


_MOSS_FIELDS = {"Human": ("<|Human|>:", "<eoh>"), "Inner Thoughts": ("<|Inner Thoughts|>:", "<eot>"),
                "Commands": ("<|Commands|>:", "<eoc>"), "Tool Responses": ("<|Results|>:", "<eor>"),
                "MOSS": ("<|MOSS|>:", "<eom>")}
_MOSS_COMMAND = re.compile(r'^\s*([A-Za-z_][\w ]*?)\s*\((.*)\)\s*$', re.S)


def _moss_field(turn: dict, key: str, where: str) -> str:
    v = turn.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise FormatError(f"{where}{key!r} must be a string")
    start, end = _MOSS_FIELDS[key]
    v = v.strip()
    if not v.startswith(start):
        raise FormatError(f"{where}{key!r} must start with {start!r}")
    v = v[len(start):].strip()
    if v.endswith(end):
        v = v[: -len(end)].strip()
    return v


def _moss_calls(commands: str, where: str) -> list[dict]:
    calls = []
    for line in commands.splitlines():
        line = line.strip().strip("-").strip()
        if not line or line.lower() == "none":
            continue
        m = _MOSS_COMMAND.match(line)
        if not m:
            raise FormatError(f"{where}cannot parse command {line!r}; expected Name(\"argument\")")
        arg = m.group(2).strip()
        if len(arg) >= 2 and arg[0] == arg[-1] and arg[0] in "\"'":
            arg = arg[1:-1]
        calls.append(_tool_call(m.group(1).strip(), {"input": arg}, where))
    return calls


def _moss(rec: dict) -> Sample:
    chat = rec.get("chat")
    if not isinstance(chat, dict) or not chat:
        raise FormatError("'chat' must be a non-empty object of turn_1, turn_2, ...")
    msgs = []
    if s := _str_field(rec, "meta_instruction", required=False):
        msgs.append(_msg("system", s.strip()))
    keys = sorted(chat, key=lambda k: int(k.split("_")[-1]) if k.split("_")[-1].isdigit() else 1 << 30)
    for key in keys:
        where = f"chat.{key}: "
        if not re.fullmatch(r"turn_\d+", key):
            raise FormatError(f"{where}turn keys must be turn_1, turn_2, ...")
        turn = chat[key]
        if not isinstance(turn, dict):
            raise FormatError(f"{where}a turn must be an object")
        human = _moss_field(turn, "Human", where)
        answer = _moss_field(turn, "MOSS", where)
        if not human:
            raise FormatError(f"{where}no 'Human' text")
        if not answer:
            raise FormatError(f"{where}no 'MOSS' reply")
        msgs.append(_msg("user", human))
        thoughts = _moss_field(turn, "Inner Thoughts", where)
        calls = _moss_calls(_moss_field(turn, "Commands", where), where)
        results = _moss_field(turn, "Tool Responses", where)
        prefix = f"<think>\n{thoughts}\n</think>\n\n" if thoughts and thoughts.lower() != "none" else ""
        if calls:
            msgs.append(_msg("assistant", prefix, tool_calls=calls))
            msgs.append(_msg("tool", results or "None"))
            prefix = ""
        msgs.append(_msg("assistant", prefix + answer))
    return Sample(msgs)


_OASST_TURN = re.compile(r"###\s*(Human|Assistant):")


def _oasst(rec: dict) -> Sample:
    text = _str_field(rec, "text")
    parts = _OASST_TURN.split(text)
    if parts[0].strip():
        raise FormatError("text before the first '### Human:' turn")
    msgs = []
    for who, body in zip(parts[1::2], parts[2::2]):
        if not body.strip():
            raise FormatError(f"empty '### {who}:' turn")
        msgs.append(_msg("user" if who == "Human" else "assistant", body.strip()))
    if not msgs:
        raise FormatError("no '### Human:' / '### Assistant:' turns")
    return Sample(msgs)


def _text(rec: dict) -> Sample:
    text = _str_field(rec, "text")
    if not text.strip():
        raise FormatError("empty 'text'")
    return Sample(text=text)


# ----------------------------------------------------------------------------- validation


def validate_messages(msgs: list[dict]) -> None:
    """Checks the conversation shape: system first, user opens, assistant answers, tool
    results only after a tool call, at least one trained assistant message, the last
    message is the assistant's."""
    if not msgs:
        raise FormatError("no messages")
    body = msgs[1:] if msgs[0]["role"] == "system" else msgs
    if any(m["role"] == "system" for m in body):
        raise FormatError("a system message may only come first")
    if not body:
        raise FormatError("only a system message")
    if body[0]["role"] != "user":
        raise FormatError(f"the conversation must open with a user turn, not {body[0]['role']!r}")
    prev = None
    for j, m in enumerate(body):
        r = m["role"]
        if r == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise FormatError(f"assistant turn {j} is empty")
        if r == "user" and prev == "user":
            raise FormatError(f"two user turns in a row at turn {j}")
        if r == "tool" and not (prev == "tool" or (prev == "assistant" and body[j - 1].get("tool_calls"))):
            raise FormatError(f"tool result at turn {j} does not follow a tool call")
        prev = r
    if body[-1]["role"] != "assistant":
        raise FormatError(f"the last turn is {body[-1]['role']!r}; it must be the assistant's")
    if not any(m["role"] == "assistant" and m["train"] for m in body):
        raise FormatError("no trained assistant turn (every assistant message has loss_weight 0)")
