"""Tool-call markup: learnt from the chat template itself, parsed back from model output while it streams.

`detect_format(render)` renders a probe conversation (an assistant turn calling a made-up
function) through the template and reads off what surrounds the call's JSON:

* InternLM2 (`internlm2`): `<|action_start|><|plugin|>\n{"name": ..., "parameters": {...}}<|action_end|>`;
* templates in the Hermes / Qwen2 style: `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`;
* Llama-3.1 style JSON-only turns: `{"name": ..., "parameters": {...}}`.

Templates that do not render `tool_calls` (the shipped `chatml`, `llama-2`, `llama-3`, `plain`)
get the Hermes markup, the same convention puyu's finetuning data uses for them
(`puyu_jax.finetune.sft.adapt_messages`); the tool schemas then go into the system message.

`ToolCallParser` turns generated text into content and calls, incrementally: text that could be
the start of the markup is held back until it is decided, a call's name is reported as soon as
it is complete and its arguments as they arrive (the way OpenAI streams `tool_calls`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["ToolCallFormat", "HERMES", "detect_format", "ToolCallParser", "ParsedCall", "parse_tool_calls"]

_PROBE_NAME = "zq_probe_function"
_PROBE_ARGS = {"zq_probe_argument": 7}
_PROBE_TOOL = {"type": "function", "function": {
    "name": "zq_probe_tool", "description": "probe",
    "parameters": {"type": "object", "properties": {"zq_probe_argument": {"type": "integer"}}}}}


@dataclass(frozen=True)
class ToolCallFormat:
    """How one call is written: `start` + a JSON object {name_key: NAME, args_key: ARGS} + `end`.

    head / between: the JSON text before the name's value and between the name and the
    arguments' values, as the template writes them (used to prefill a forced call).
    native_calls / native_tools: the template writes assistant `tool_calls` / shows `tools` itself.
    """

    start: str
    end: str
    name_key: str = "name"
    args_key: str = "arguments"
    head: str = '{"name": '
    between: str = ', "arguments": '
    native_calls: bool = False
    native_tools: bool = False

    @property
    def marker(self) -> str:
        """The text whose appearance in the output opens a call."""
        return self.start.strip() or self.head.rstrip()

    def render_call(self, name: str, arguments: str) -> str:
        """A call written as text (for templates that do not write `tool_calls` themselves)."""
        try:
            args = json.dumps(json.loads(arguments or "{}"), ensure_ascii=False)
        except json.JSONDecodeError:
            args = json.dumps(arguments, ensure_ascii=False)
        return f"{self.start}{self.head}{json.dumps(name, ensure_ascii=False)}{self.between}{args}}}{self.end}"

    def prefill(self, name: str | None) -> str:
        """Assistant text that commits the model to a call (of `name`, when given)."""
        if name is None:
            return self.start + self.head.rstrip() if self.start.strip() else self.head.rstrip()
        return f"{self.start}{self.head}{json.dumps(name, ensure_ascii=False)}{self.between}"

    def instructions(self) -> str:
        """How to call, for a system message (templates that do not show tools themselves)."""
        example = f'{self.start}{self.head}<function-name>{self.between}<args-json-object>}}{self.end}'
        return ("For each function call, return a json object with the function name and arguments in this "
                f"format:\n{example}")


HERMES = ToolCallFormat(start="<tool_call>\n", end="\n</tool_call>")


def detect_format(render: Callable[..., str]) -> ToolCallFormat:
    """The tool-call markup of a chat template.

    Args:
      render: `render(messages, tools=..., add_generation_prompt=...) -> str` for the template.
    Returns:
      The format the template writes assistant `tool_calls` in, or `HERMES` (with
      native_tools telling whether the template shows `tools` itself) when it writes none.
    """
    user = [{"role": "user", "content": "zq_probe_question"}]
    try:
        base = render(user, tools=[_PROBE_TOOL], add_generation_prompt=True)
        native_tools = "zq_probe_tool" in base
        call = {"id": "call_0", "type": "function",
                "function": {"name": _PROBE_NAME, "arguments": json.dumps(_PROBE_ARGS)}}
        with_call = render(user + [{"role": "assistant", "content": "", "tool_calls": [call]}],
                           tools=[_PROBE_TOOL], add_generation_prompt=False)
        plain = render(user + [{"role": "assistant", "content": "zq_probe_reply"}],
                       tools=[_PROBE_TOOL], add_generation_prompt=False)
    except Exception:  # a template that cannot render the probe writes no tool calls we could learn
        return HERMES
    if _PROBE_NAME not in with_call:
        return _replace(HERMES, native_tools=native_tools)
    # the generation prompt may end in whitespace that the template trims before a call
    head = base if with_call.startswith(base) else base.rstrip()
    if not with_call.startswith(head) or not plain.startswith(head):
        return _replace(HERMES, native_tools=native_tools)
    part = with_call[len(head):].lstrip() if head is not base else with_call[len(head):]
    turn_end = plain[len(head):].split("zq_probe_reply", 1)[-1]
    found = _find_call_json(part)
    if found is None:
        return _replace(HERMES, native_tools=native_tools)
    j, e, name_key, args_key = found
    text = part[j:e]
    rest = part[e:]
    end = rest[: len(rest) - len(turn_end)] if turn_end and rest.endswith(turn_end) else rest
    name_at = text.find(json.dumps(_PROBE_NAME))
    args_at = text.find('{"zq_probe_argument"')
    if 0 <= name_at < args_at:
        head = text[:name_at]
        between = text[name_at + len(json.dumps(_PROBE_NAME)):args_at]
    else:  # arguments first: prefill can only open the call
        head, between = "{", ""
    return ToolCallFormat(start=part[:j], end=end.rstrip("\n") if end.strip() else "", name_key=name_key,
                          args_key=args_key, head=head, between=between, native_calls=True, native_tools=native_tools)


def _replace(fmt: ToolCallFormat, **kw) -> ToolCallFormat:
    import dataclasses

    return dataclasses.replace(fmt, **kw)


def _find_call_json(text: str) -> tuple[int, int, str, str] | None:
    """(start, end, name_key, args_key) of the JSON object holding the probe call in `text`."""
    decoder = json.JSONDecoder()
    at = text.find(json.dumps(_PROBE_NAME))
    for j in range(at, -1, -1):
        if text[j] != "{":
            continue
        try:
            obj, e = decoder.raw_decode(text, j)
        except json.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        name_key = next((k for k, v in obj.items() if v == _PROBE_NAME), None)
        args_key = next((k for k, v in obj.items() if _is_probe_args(v)), None)
        if name_key and args_key:
            return j, e, name_key, args_key
    return None


def _is_probe_args(v) -> bool:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            return False
    return v == _PROBE_ARGS


# ------------------------------------------------------------------------------------------ parsing


@dataclass
class ParsedCall:
    id: str
    name: str
    arguments: str = ""
    complete: bool = False


@dataclass
class _Event:
    kind: str  # "content" | "name" | "args"
    text: str
    index: int = -1
    id: str = ""


def _new_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclass
class ToolCallParser:
    """Splits streamed model text into content and tool calls (see the module docstring).

    `feed(text)` and then `finish()` return events: ("content", text), ("name", name, index, id)
    when a call's name is known, ("args", chunk, index) as its arguments arrive.
    """

    fmt: ToolCallFormat
    calls: list[ParsedCall] = field(default_factory=list)
    _buf: str = ""
    _in_call: bool = False
    _call: str = ""  # text of the current call after the marker
    _name_end: int = -1  # where the name's value ends in _call (incremental mode)
    _args_at: int = -1  # where the arguments' value starts in _call
    _args_sent: int = 0  # characters of the arguments' value already reported
    _scan: "_JsonScan | None" = None
    _obj_end: int = -1  # where the current call's JSON object ended in _call
    _strip_lead: bool = False  # whitespace right after a call is markup, not content
    _ws: str = ""  # whitespace before the current call's marker (content again if it is no call)

    def __post_init__(self):
        key = re.escape(json.dumps(self.fmt.name_key))
        self._name_re = re.compile(r"\s*\{\s*" + key + r'\s*:\s*"((?:[^"\\]|\\.)*)"')
        keys = {self.fmt.args_key, "arguments", "parameters"}
        self._args_keys = keys
        self._args_re = re.compile(r"\s*,\s*(?:" + "|".join(re.escape(json.dumps(k)) for k in sorted(keys)) + r")\s*:\s*(?=\S)")
        self._marker = self.fmt.marker
        # with no start markup the marker is the JSON head itself, which belongs to the call text
        self._marker_in_call = not self.fmt.start.strip()

    # ---- public
    def feed(self, text: str) -> list[_Event]:
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[_Event]:
        events = self._run(final=True)
        if self._in_call:
            events += self._end_call(final=True)
        elif self._buf and not (self._strip_lead and not self._buf.strip()):
            events.append(_Event("content", self._buf))
            self._buf = ""
        return events

    # ---- states
    def _run(self, final: bool) -> list[_Event]:
        events: list[_Event] = []
        while True:
            if not self._in_call:
                if self._strip_lead:
                    self._buf = self._buf.lstrip()
                    self._strip_lead = not self._buf
                k = self._buf.find(self._marker)
                if k < 0:
                    if not final:
                        keep = _held_back(self._buf, self._marker)
                        if keep < len(self._buf):
                            events.append(_Event("content", self._buf[: len(self._buf) - keep]))
                            self._buf = self._buf[len(self._buf) - keep:]
                    return events
                before = self._buf[:k].rstrip()
                self._ws = self._buf[len(before):k]
                if before:
                    events.append(_Event("content", before))
                self._call = self._buf[k:] if self._marker_in_call else self._buf[k + len(self._marker):]
                self._buf = ""
                self._in_call = True
                self._name_end, self._args_at, self._args_sent, self._scan, self._obj_end = -1, -1, 0, None, -1
            else:
                self._call += self._buf
                self._buf = ""
                progressed = self._advance_call(events)
                if not progressed:
                    return events

    def _advance_call(self, events: list[_Event]) -> bool:
        """Reports what is new in the current call; True when the call ended (text continues in _buf)."""
        if self._obj_end >= 0:
            return self._after_object(self._obj_end, events)
        stripped = self._call.lstrip()
        if stripped and stripped[0] != "{":  # not a JSON call after all: give the text back as content
            text = self._ws + ("" if self._marker_in_call else self._marker) + self._call
            self._in_call, self._call, self._buf = False, "", ""
            events.append(_Event("content", text))
            return False
        index = len(self.calls)
        if self._name_end < 0:
            m = self._name_re.match(self._call)
            if m:
                name = json.loads('"' + m.group(1) + '"')
                self.calls.append(ParsedCall(_new_id(), name))
                events.append(_Event("name", name, index, self.calls[-1].id))
                self._name_end = m.end()
            else:
                return self._whole_object(events)
        call = self.calls[-1]
        index = len(self.calls) - 1
        if self._args_at < 0:
            m = self._args_re.match(self._call, self._name_end)
            if not m:
                return self._whole_object(events, named=True)
            self._args_at = m.end()
            self._scan = _JsonScan()
        value_end = self._scan.feed(self._call, self._args_at + self._args_sent)
        stop = value_end if value_end >= 0 else len(self._call)
        if self._call[self._args_at:self._args_at + 1] == '"':  # arguments as a JSON string: wait for all of it
            if value_end >= 0 and self._args_sent == 0:
                chunk = json.loads(self._call[self._args_at:value_end])
                call.arguments += chunk
                events.append(_Event("args", chunk, index))
                self._args_sent = value_end - self._args_at
        else:
            chunk = self._call[self._args_at + self._args_sent:stop]
            if chunk:
                call.arguments += chunk
                events.append(_Event("args", chunk, index))
                self._args_sent += len(chunk)
        if value_end < 0:
            return False
        return self._close(value_end, events)

    def _whole_object(self, events: list[_Event], named: bool = False) -> bool:
        """A call whose keys come in another order: reported once its JSON object is complete."""
        try:
            lead = len(self._call) - len(self._call.lstrip())
            obj, e = json.JSONDecoder().raw_decode(self._call, lead)
        except json.JSONDecodeError:
            return False
        if not isinstance(obj, dict) or self.fmt.name_key not in obj:
            text = self._ws + ("" if self._marker_in_call else self._marker) + self._call
            self._in_call, self._call = False, ""
            events.append(_Event("content", text))
            return False
        if not named:
            self.calls.append(ParsedCall(_new_id(), str(obj[self.fmt.name_key])))
            events.append(_Event("name", self.calls[-1].name, len(self.calls) - 1, self.calls[-1].id))
        args = next((obj[k] for k in (self.fmt.args_key, "arguments", "parameters") if k in obj), {})
        args = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        self.calls[-1].arguments += args
        events.append(_Event("args", args, len(self.calls) - 1))
        self.calls[-1].complete = True
        self._obj_end = e
        return self._after_object(e, events)

    def _close(self, value_end: int, events: list[_Event]) -> bool:
        """After the arguments' value: the object's closing brace, then the end markup."""
        m = re.compile(r"\s*\}").match(self._call, value_end)
        if not m:
            if len(self._call) - value_end > 64:  # something else follows: treat it as the end of the call
                self.calls[-1].complete = True
                self._obj_end = value_end
                return self._after_object(value_end, events)
            return False
        self.calls[-1].complete = True
        self._obj_end = m.end()
        return self._after_object(m.end(), events)

    def _after_object(self, e: int, events: list[_Event]) -> bool:
        rest = self._call[e:]
        end = self.fmt.end.strip()
        if end:
            k = rest.find(end)
            if k < 0:
                if rest.strip() and not end.startswith(rest.strip()[: len(end)]):
                    k, end = 0, ""  # no end markup, but more text: the call ended anyway
                else:
                    return False
            rest = rest[k + len(end):]
        self._in_call, self._call = False, ""
        self._buf = rest.lstrip()
        self._strip_lead = not self._buf
        return True

    def _end_call(self, final: bool) -> list[_Event]:
        """At the end of generation inside a call: report what can still be read."""
        events: list[_Event] = []
        before = len(self.calls)
        if self._name_end < 0 and self._in_call and (self._whole_object(events) or True) and len(self.calls) == before \
                and self._in_call:
            text = self._ws + ("" if self._marker_in_call else self._marker) + self._call
            if text.strip():
                events.append(_Event("content", text))
        self._in_call, self._call = False, ""
        if self._buf.strip():
            events.append(_Event("content", self._buf))
        self._buf = ""
        return events


def _held_back(buf: str, marker: str) -> int:
    """How many trailing characters of buf to hold: a prefix of the marker, plus whitespace before it."""
    keep = 0
    for n in range(min(len(marker) - 1, len(buf)), 0, -1):
        if buf.endswith(marker[:n]):
            keep = n
            break
    rest = buf[: len(buf) - keep]
    return keep + (len(rest) - len(rest.rstrip()))


class _JsonScan:
    """Finds where one JSON value ends, fed a growing text (strings and escapes aware)."""

    def __init__(self):
        self.pos = -1
        self.depth = 0
        self.in_str = False
        self.esc = False
        self.started = False
        self.end = -1

    def feed(self, text: str, start: int) -> int:
        """Scans text from where it stopped; returns the value's end index, or -1 while incomplete."""
        if self.end >= 0:
            return self.end
        i = max(start, self.pos + 1) if self.started else start
        while i < len(text):
            c = text[i]
            if not self.started:
                if c.isspace():
                    i += 1
                    continue
                self.started = True
                if c in "{[":
                    self.depth = 1
                elif c == '"':
                    self.in_str = True
                    self.depth = 0
                else:  # a bare number / literal ends at a delimiter
                    self.depth = -1
            elif self.depth == -1:
                if c in ",}] \n\t\r":
                    self.end = i
                    return i
            elif self.in_str:
                if self.esc:
                    self.esc = False
                elif c == "\\":
                    self.esc = True
                elif c == '"':
                    self.in_str = False
                    if self.depth == 0:
                        self.end = i + 1
                        return self.end
            elif c == '"':
                self.in_str = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.end = i + 1
                    return self.end
            self.pos = i
            i += 1
        return -1


def parse_tool_calls(text: str, fmt: ToolCallFormat) -> tuple[str, list[ParsedCall]]:
    """The whole-text version: (content, calls)."""
    p = ToolCallParser(fmt)
    events = p.feed(text) + p.finish()
    return "".join(e.text for e in events if e.kind == "content"), p.calls
