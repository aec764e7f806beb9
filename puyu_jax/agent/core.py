"""The agent core: an immutable state, a step function, and a runner that loops backend -> step.

    state = init_state(question, tools, protocol)
    reply = llm.chat(list(state.messages), tools=protocol.llm_tools(tools), stop=protocol.stop)
    state = step(state, reply, tools, protocol)      # parse, run the tool(s), append the results

A backend with `accepts_constraints` (the local engine) is also given the protocol's
`action_format`: the reply is then decoded under a grammar, so it always parses into a call of a
declared tool with schema-valid arguments, or a final answer (`require_tool`: the first reply is a call);
its last allowed turn (`max_turns`) is decoded under the protocol's `answer_format`, so a run that
has not finished by then ends with the model's answer (LangChain's `early_stopping_method="generate"`).
With `example`, a worked example (`Protocol.example_messages`) precedes the question.

`step` is pure apart from running the tools: the same state and reply give the same new state
(for deterministic tools). Every failure of the model (unreadable output, unknown tool, bad
arguments) and of a tool becomes an observation the model sees on its next turn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from puyu_jax.agent.protocols import Protocol, get_protocol
from puyu_jax.agent.tool import Tool, ToolResult
from puyu_jax.agent.types import Act, Event, Final, LLMReply, Malformed, ToolCall

__all__ = ["AgentState", "init_state", "step", "call_tool", "stream", "run"]


@dataclass(frozen=True)
class AgentState:
    """Everything about one agent run. `messages` is the conversation the model sees next."""

    messages: tuple[dict, ...]
    trajectory: tuple[Event, ...] = ()
    finished: bool = False
    answer: str | None = None
    turn: int = 0


def init_state(question: str, tools: Sequence[Tool], protocol: str | Protocol = "react",
               system: str | None = None, example: bool = False) -> AgentState:
    """The state before the first turn: the protocol's system turn(s), with `example` a worked example
    of a tool call (earlier turns; the one nearest the question, see `protocols.nearest_example`), and
    the question."""
    proto = get_protocol(protocol)
    messages = proto.system_messages(tools, system) + (proto.example_messages(tools, question=question) if example else [])
    messages += [{"role": "user", "content": question}]
    return AgentState(messages=tuple(messages))


def call_tool(call: ToolCall, tools: Sequence[Tool]) -> ToolResult:
    """Runs one call; an unknown tool or unreadable call is an error result, never an exception."""
    if call.error is not None:
        return ToolResult(error=f"could not read the call of {call.name!r}: {call.error}")
    by_name = {t.spec.name: t for t in tools}
    if call.name not in by_name:
        return ToolResult(error=f"unknown tool {call.name!r}; available tools: {', '.join(by_name) or 'none'}")
    return by_name[call.name](call.arguments)


def step(state: AgentState, reply: LLMReply, tools: Sequence[Tool], protocol: str | Protocol = "react") -> AgentState:
    """One turn: read the model's reply, run the tools it called, append everything.

    Args:
      state: the state the reply answers.
      reply: the backend's output for `state.messages`.
      tools: the tools the model may call.
      protocol: how `reply` is read and results are written back.

    Returns:
      The next state: `finished` with `answer` on a final answer; otherwise with the tool
      results (or the format error) appended for the next turn.
    """
    if state.finished:
        raise ValueError("step() on a finished agent state")
    proto = get_protocol(protocol)
    parsed = proto.parse(reply)
    turn = state.turn + 1
    events: list[Event] = []
    if parsed.thought:
        events.append(Event("thought", parsed.thought, turn))
    messages = list(state.messages) + [proto.assistant_message(reply, parsed)]
    if isinstance(parsed, Final):
        events.append(Event("final", parsed.answer, turn))
        return AgentState(tuple(messages), state.trajectory + tuple(events), True, parsed.answer, turn)
    if isinstance(parsed, Malformed):
        events.append(Event("error", parsed.error, turn))
        messages += proto.error_messages(parsed.error)
    else:
        assert isinstance(parsed, Act)
        results = []
        for call in parsed.calls:
            events.append(Event("action", _show_args(call.arguments), turn, tool=call.name, args=call.arguments))
            result = call_tool(call, tools)
            text = result.text()
            results.append((call, text))
            events.append(Event("observation", text, turn, tool=call.name,
                                data={"ok": result.ok, "outputs": list(result.outputs)}))
        messages += proto.observation_messages(results)
    return dataclasses.replace(state, messages=tuple(messages), trajectory=state.trajectory + tuple(events), turn=turn)


def _show_args(args) -> str:
    if isinstance(args, dict) and len(args) == 1 and isinstance(next(iter(args.values())), str):
        return next(iter(args.values()))  # e.g. the code of a python call, shown as code
    if isinstance(args, dict):
        import json

        return json.dumps(args, ensure_ascii=False)
    return str(args)


def _states(state: AgentState, llm, tools: Sequence[Tool], proto: Protocol, max_turns: int, constrain: bool = True,
            require_tool: bool = False) -> Iterator[AgentState]:
    schemas = proto.llm_tools(tools)
    # backends declare whether they decode under a grammar (the local engine does; HTTP backends and replays not)
    constrain = constrain and bool(tools) and getattr(llm, "accepts_constraints", False)
    while not state.finished and state.turn < max_turns:
        kw = {}
        if constrain:
            first, last = state.turn == 0, state.turn == max_turns - 1
            if last and not (first and require_tool):  # the last turn answers (a required call goes first)
                action = proto.answer_format()
            else:
                action = proto.action_format(tools, required=require_tool and first)
            kw = {"constraint": action} if action is not None else {}
        reply = llm.chat(list(state.messages), tools=schemas, stop=list(proto.stop), **kw)
        state = step(state, reply, tools, proto)
        yield state
    if not state.finished:
        stop = Event("error", f"stopped after {max_turns} turn(s) without a final answer", state.turn)
        yield dataclasses.replace(state, trajectory=state.trajectory + (stop,))


def stream(question: str, llm, tools: Sequence[Tool], protocol: str | Protocol = "react", *,
           max_turns: int = 5, system: str | None = None, constrain: bool = True,
           require_tool: bool = False, example: bool = False) -> Iterator[tuple[Event, AgentState]]:
    """Runs the agent, yielding each new trajectory event with the state it belongs to.

    Args:
      question: the user's request.
      llm: a backend with `chat(messages, tools=, stop=) -> LLMReply` (see `puyu_jax.agent.llm`).
      tools: the tools the model may call.
      protocol: `react`, `internlm2`, `openai`, or a Protocol instance.
      max_turns: model calls at most; running out adds an `error` event and leaves `finished` False
        (constrained, the last call can only give the final answer).
      system: an optional system message (placed before the protocol's tool description).
      constrain: decode each reply under the protocol's action grammar when the backend can.
      require_tool: (constrained) the first reply must be a tool call.
      example: show the model a worked example of a tool call and its use before the question.
    """
    proto = get_protocol(protocol)
    state = init_state(question, tools, proto, system, example)
    seen = 0
    for state in _states(state, llm, tools, proto, max_turns, constrain, require_tool):
        for event in state.trajectory[seen:]:
            yield event, state
        seen = len(state.trajectory)


def run(question: str, llm, tools: Sequence[Tool], protocol: str | Protocol = "react", *, max_turns: int = 5,
        system: str | None = None, on_event: Callable[[Event], None] | None = None, constrain: bool = True,
        require_tool: bool = False, example: bool = False) -> AgentState:
    """Runs the agent to its end (see `stream`) and returns the final state."""
    proto = get_protocol(protocol)
    state = init_state(question, tools, proto, system, example)
    for event, state in stream(question, llm, tools, proto, max_turns=max_turns, system=system, constrain=constrain,
                               require_tool=require_tool, example=example):
        if on_event is not None:
            on_event(event)
    return state
