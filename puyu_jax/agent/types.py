"""Plain data passed between the LLM backends, the protocols and the agent core."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ToolCall", "LLMReply", "Final", "Act", "Malformed", "Parsed", "Event", "EventKind"]


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for. `error` is set when the call itself could not be read."""

    name: str
    arguments: dict | str
    id: str = ""
    error: str | None = None


@dataclass(frozen=True)
class LLMReply:
    """What a backend returns: the text, and the structured tool calls of function-calling APIs."""

    text: str
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Final:
    """The model gave its answer."""

    thought: str
    answer: str


@dataclass(frozen=True)
class Act:
    """The model called one or more tools."""

    thought: str
    calls: tuple[ToolCall, ...]


@dataclass(frozen=True)
class Malformed:
    """The model's output follows neither branch of the protocol; `error` says what to fix."""

    thought: str
    error: str


Parsed = Final | Act | Malformed

EventKind = Literal["thought", "action", "observation", "final", "error"]


@dataclass(frozen=True)
class Event:
    """One entry of an agent's trajectory, as streamed to the user."""

    kind: EventKind
    text: str
    turn: int
    tool: str | None = None
    args: Any = None
    data: dict = field(default_factory=dict)  # e.g. {"outputs": [...]} of an observation
