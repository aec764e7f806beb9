"""Agent protocols: how tools are shown to the model, how its output is read, how results go back.

  * `ReAct`: the text format of Yao et al. (2023) as used by Lagent and LangChain:
    `Thought:` / `Action:` / `Action Input:` / `Observation:` ... `Final Answer:`.
  * `InternLM2`: InternLM2-Chat's tool markup (InternLM's `chat_format.md`): tools listed in a
    `system name=<|plugin|>` turn, the code interpreter announced in a `system name=<|interpreter|>`
    turn; the model calls with `<|action_start|><|plugin|>\\n{"name": ..., "parameters": ...}<|action_end|>`
    or `<|action_start|><|interpreter|>\\n```python ...```<|action_end|>`; results come back in the
    `environment` role (`name` plugin or interpreter). A reply without an action is the answer.
  * `OpenAITools`: OpenAI function calling: tools as JSON schemas in the request, calls as
    structured `tool_calls`, results as `tool` messages.

A protocol is stateless: `parse` reads one reply, the `*_message(s)` methods build what goes
back into the conversation. Malformed output gives `Malformed` with a message for the model.
`call_reply` / `answer_reply` write a call and an answer the way the model should, so
`example_messages` can show a worked example (an `Example`: a call, its observation, an answer
taken from it) as earlier turns of the conversation, which small models imitate far more
reliably than a format described in words.

`action_format` is the protocol's reply written as a grammar (an xgrammar structural tag, see
`puyu_jax.serve.guided`): a backend that decodes under it (`LocalLLM`) can only produce a reply
that parses into a call of a declared tool with arguments valid under its schema, or a final
answer (with `required`, a call); `answer_format` allows only a final answer (an agent's last turn).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass

from puyu_jax.agent.tool import Tool
from puyu_jax.agent.types import Act, Final, LLMReply, Malformed, Parsed, ToolCall
from puyu_jax.serve.guided import json_schema_tag, tool_call_tag

__all__ = ["Protocol", "ReAct", "InternLM2", "OpenAITools", "PROTOCOLS", "get_protocol", "truncate_at", "Example",
           "EXAMPLES", "nearest_example"]


def truncate_at(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        i = text.find(s)
        if s and i != -1:
            cut = min(cut, i)
    return text[:cut]


def _describe(t: Tool) -> str:
    return json.dumps({"name": t.spec.name, "description": t.spec.description,
                       "parameters": t.spec.json_schema()}, ensure_ascii=False)


def _strip_fence(s: str) -> str:
    s = s.strip()
    m = re.fullmatch(r"```[\w+-]*\n(.*?)\n?```", s, re.S)
    return m.group(1) if m else s


def _parse_json_args(raw: str) -> dict | str:
    """A JSON object if `raw` is one (fences allowed), else the raw text (a one-text-argument call)."""
    body = _strip_fence(raw)
    if body.startswith("{"):
        try:
            value = json.loads(body)
        except json.JSONDecodeError:
            return raw.strip()
        if isinstance(value, dict):
            return value
    return raw.strip()


@dataclass(frozen=True)
class Example:
    """A worked example of one tool call: the question, the call, the tool's output, the answer taken from it.
    `observation` is what the real tool returns for `arguments` (tests/agent check it)."""

    question: str
    thought: str
    tool: str
    arguments: dict
    observation: str
    answer: str


#: Worked examples: `example_messages` shows the one whose question is nearest the user's (BM25) among
#: those whose tool the agent has. Each `observation` is what the real tool prints (tests/agent checks).
EXAMPLES: tuple[Example, ...] = (
    Example("How many seconds are there in 3 hours?", "I will compute it with Python.", "python",
            {"code": "print(3 * 60 * 60)"}, "10800", "10800"),
    Example("How many minutes are there in a week?", "I will compute it with the calculator.", "calculator",
            {"expression": "7 * 24 * 60"}, "10080", "10080"),
    Example("What is the sum of the squares of the integers from 1 to 20?", "I will compute it with Python.",
            "python", {"code": "print(sum(n * n for n in range(1, 21)))"}, "2870", "2870"),
    Example("How many prime numbers are there below 100?", "I will count them with Python.", "python",
            {"code": "print(sum(all(n % d for d in range(2, n)) for n in range(2, 100)))"}, "25", "25"),
    Example("1000 dollars earn 5% interest a year, compounded yearly. What are they worth after 3 years?",
            "I will compute it with Python.", "python", {"code": "print(round(1000 * 1.05 ** 3, 2))"},
            "1157.63", "1157.63"),
)


#: Words every tool question shares, not a topic: left out of the example retrieval with the stop words.
_QUESTION_WORDS = ["what", "how", "many", "much", "which", "compute", "calculate", "use", "using", "tool", "python",
                   "calculator", "answer", "number", "result"]


def nearest_example(question: str | None, examples: Sequence[Example]) -> Example | None:
    """The example whose question is nearest `question` by BM25 (bm25s; English stop words and
    generic question words removed), as OpenCompass's BM25 retriever picks in-context examples;
    the first when nothing matches or no question is given."""
    if not examples:
        return None
    if not question:
        return examples[0]
    import logging

    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # its index-building notes are not the user's business
    stop = list(bm25s.stopwords.STOPWORDS_EN) + _QUESTION_WORDS
    index = bm25s.BM25()
    index.index(bm25s.tokenize([e.question for e in examples], stopwords=stop, show_progress=False), show_progress=False)
    query = bm25s.tokenize([question], stopwords=stop, show_progress=False)
    if not query.vocab:
        return examples[0]
    docs, scores = index.retrieve(query, k=len(examples), show_progress=False)
    best, score = int(docs[0, 0]), float(scores[0, 0])
    return examples[best] if score > 0 else examples[0]


@dataclass(frozen=True)
class Protocol:
    """Base: subclasses define the prompt, the parser and the messages that carry results back."""

    name: str = ""
    stop: tuple[str, ...] = ()  # strings that end the model's turn (text protocols)

    def system_messages(self, tools: Sequence[Tool], system: str | None = None) -> list[dict]:
        raise TypeError(f"{type(self).__name__} must define system_messages()")

    def llm_tools(self, tools: Sequence[Tool]) -> list[dict] | None:
        """Tool schemas sent with the request (function-calling protocols only)."""
        return None

    def parse(self, reply: LLMReply) -> Parsed:
        raise TypeError(f"{type(self).__name__} must define parse()")

    def action_format(self, tools: Sequence[Tool], required: bool = False) -> str | None:
        """The reply as a structural tag (JSON text): a tool call with schema-valid arguments, or a
        final answer; with `required`, a call. None when the protocol has no such grammar."""
        return None

    def answer_format(self) -> str | None:
        """The reply as a structural tag that allows only a final answer (an agent's last turn), or None."""
        return None

    def call_reply(self, thought: str, call: ToolCall) -> LLMReply:
        """`call` with `thought`, written as the model should write it."""
        raise TypeError(f"{type(self).__name__} must define call_reply()")

    def answer_reply(self, thought: str, answer: str) -> LLMReply:
        """A final answer, written as the model should write it."""
        raise TypeError(f"{type(self).__name__} must define answer_reply()")

    def example_messages(self, tools: Sequence[Tool], examples: Sequence[Example] = EXAMPLES,
                         question: str | None = None) -> list[dict]:
        """A worked example as earlier turns (question, call, observation, answer), in this protocol's
        own messages: of `examples` whose tool is among `tools`, the one nearest `question`
        (`nearest_example`; the first without a question); [] when none has such a tool."""
        names = {t.spec.name for t in tools}
        ex = nearest_example(question, [e for e in examples if e.tool in names])
        if ex is None:
            return []
        call = ToolCall(ex.tool, dict(ex.arguments), "call_example")
        act, done = self.call_reply(ex.thought, call), self.answer_reply("", ex.answer)
        return ([{"role": "user", "content": ex.question}, self.assistant_message(act, self.parse(act))]
                + self.observation_messages([(call, ex.observation)]) + [self.assistant_message(done, self.parse(done))])

    def assistant_message(self, reply: LLMReply, parsed: Parsed) -> dict:
        return {"role": "assistant", "content": reply.text}

    def observation_messages(self, results: Sequence[tuple[ToolCall, str]]) -> list[dict]:
        raise TypeError(f"{type(self).__name__} must define observation_messages()")

    def error_messages(self, error: str) -> list[dict]:
        """What the model sees after a malformed reply."""
        return [{"role": "user", "content": error}]


# ----------------------------------------------------------------------------- ReAct

REACT_PROMPT = """Answer the question as well as you can. You can use these tools:

{tools}

To use a tool, reply in exactly this format:

Thought: what you need to do next
Action: the tool to use, one of [{names}]
Action Input: the tool's arguments as a JSON object

The tool's result then comes back to you as `Observation: <result>` (do not write it yourself).
Thought / Action / Action Input / Observation may repeat. When you know the answer, reply:

Thought: I now know the final answer
Final Answer: the final answer to the question, taken from the Observation"""

_REACT_ACTION = re.compile(r"^[ \t]*Action[ \t]*:[ \t]*(.*?)[ \t]*$", re.M)
_REACT_INPUT = re.compile(r"^[ \t]*Action[ \t]*Input[ \t]*:[ \t]*", re.M)
_REACT_FINAL = re.compile(r"^[ \t]*Final[ \t]*Answer[ \t]*:[ \t]*", re.M)
_REACT_THOUGHT = re.compile(r"^[ \t]*Thought[ \t]*:[ \t]*", re.M)


@dataclass(frozen=True)
class ReAct(Protocol):
    name: str = "react"
    stop: tuple[str, ...] = ("\nObservation:", "Observation:")
    prompt: str = REACT_PROMPT

    def system_messages(self, tools, system=None):
        text = self.prompt.format(tools="\n".join(_describe(t) for t in tools),
                                  names=", ".join(t.spec.name for t in tools))
        return [{"role": "system", "content": (system + "\n\n" if system else "") + text}]

    def parse(self, reply):
        text = truncate_at(reply.text, self.stop)
        action = _REACT_ACTION.search(text)
        final = _REACT_FINAL.search(text)
        first = min((m for m in (action, final) if m is not None), key=lambda m: m.start(), default=None)
        thought = text[:first.start()] if first is not None else text
        thought = _REACT_THOUGHT.sub("", thought, count=1).strip()
        if first is None:
            return Malformed(thought, "Your reply had neither `Action:` with `Action Input:` nor `Final Answer:`. "
                                      "Call a tool with `Action:` and `Action Input:`, or finish with "
                                      "`Final Answer: <answer>`.")
        if first is final:
            return Final(thought, text[final.end():].strip())
        name = action.group(1).strip().strip("`'\"[]")
        rest = text[action.end():]
        given = _REACT_INPUT.search(rest)
        if not name:
            return Malformed(thought, "`Action:` must name a tool.")
        if given is None:
            return Malformed(thought, f"`Action: {name}` must be followed by `Action Input:` with its arguments.")
        raw = rest[given.end():]
        after_final = _REACT_FINAL.search(raw)  # a model may run on past its call; the call ends there
        if after_final is not None:
            raw = raw[:after_final.start()]
        return Act(thought, (ToolCall(name, _parse_json_args(raw)),))

    def action_format(self, tools, required=False):
        # Thought: <one line>\nAction: <tool>\nAction Input: <JSON args>   |   Thought: ...\nFinal Answer: <text>
        # The arguments are always a JSON object valid under the tool's schema (as the prompt asks): the
        # python tool's code is then one JSON string, never a line of free text a small model fills with
        # prose or arithmetic. (`parse` still reads plain text after `Action Input:` from free decoding.)
        acts = [{"type": "sequence", "elements": [
            {"type": "const_string", "value": f"Action: {t.spec.name}\nAction Input: "},
            json_schema_tag(t.spec.json_schema())]} for t in tools]
        if not required:
            acts.append(self._final())
        return self._thought_then({"type": "or", "elements": acts})

    def answer_format(self):
        return self._thought_then(self._final())

    @staticmethod
    def _final() -> dict:
        return {"type": "sequence", "elements": [{"type": "const_string", "value": "Final Answer: "},
                                                 {"type": "regex", "pattern": r"[^\n]+"}]}

    @staticmethod
    def _thought_then(fmt: dict) -> str:
        return json.dumps({"type": "structural_tag", "format": {"type": "sequence", "elements": [
            # (unbounded lines: a counted repetition such as {1,300} takes xgrammar seconds to compile)
            {"type": "const_string", "value": "Thought: "}, {"type": "regex", "pattern": r"[^\n]+\n"}, fmt]}},
            ensure_ascii=False)

    def call_reply(self, thought, call):
        args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments, ensure_ascii=False)
        return LLMReply(f"Thought: {thought}\nAction: {call.name}\nAction Input: {args}")

    def answer_reply(self, thought, answer):
        return LLMReply(f"Thought: {thought or 'I now know the final answer'}\nFinal Answer: {answer}")

    def assistant_message(self, reply, parsed):
        return {"role": "assistant", "content": truncate_at(reply.text, self.stop).rstrip()}

    def observation_messages(self, results):
        return [{"role": "user", "content": "\n".join(f"Observation: {text}" for _, text in results)}]

    def error_messages(self, error):
        return [{"role": "user", "content": f"Observation: Error: {error}"}]


# ----------------------------------------------------------------------------- InternLM2

INTERNLM2_META = ("You are InternLM2-Chat, a harmless AI assistant. You can use tools; when you have enough "
                  "information, answer directly, without calling a tool.")
INTERNLM2_INTERPRETER = (
    "You now have access to a Jupyter notebook environment supporting Python code execution. Just send code "
    "to python to run in this stateful environment. This feature is suitable for:\n"
    "- Data analysis or processing (such as data manipulation and graphic creation)\n"
    "- Complex calculations (such as math and physics problems)\n"
    "- Programming examples (for understanding programming concepts or language features)\n"
    "- Text processing and analysis (including text analysis and natural language processing)\n"
    "- Machine learning and data science (model training and data visualization)\n"
    "- File operations and data import (handling CSV, JSON, and other format files)"
)
# the markup, spelled out (InternLM2-Chat learnt it in training; any other model reads it here)
INTERNLM2_INTERPRETER_CALL = ("To run code, write <|action_start|><|interpreter|>, then the code in a ```python block, "
                              "then <|action_end|>. Its output comes back to you; answer with it.")
INTERNLM2_PLUGIN_CALL = ('To call one of these tools, write <|action_start|><|plugin|>, then '
                         '{"name": <tool name>, "parameters": {...}}, then <|action_end|>. Its result comes back to '
                         'you; answer with it.')
ACTION_START, ACTION_END, PLUGIN, INTERPRETER = "<|action_start|>", "<|action_end|>", "<|plugin|>", "<|interpreter|>"


@dataclass(frozen=True)
class InternLM2(Protocol):
    """InternLM2 tool markup. The tool named `interpreter_tool` is offered as the code interpreter."""

    name: str = "internlm2"
    stop: tuple[str, ...] = (ACTION_END, "<|im_end|>")
    meta: str = INTERNLM2_META
    interpreter_tool: str = "python"

    def system_messages(self, tools, system=None):
        msgs = [{"role": "system", "content": system or self.meta}]
        plugins = [t.spec.to_dict() for t in tools if t.spec.name != self.interpreter_tool]
        for p in plugins:
            p.pop("returns")
        if plugins:
            msgs.append({"role": "system", "name": "plugin",
                         "content": json.dumps(plugins, ensure_ascii=False) + "\n" + INTERNLM2_PLUGIN_CALL})
        if any(t.spec.name == self.interpreter_tool for t in tools):
            msgs.append({"role": "system", "name": "interpreter",
                         "content": INTERNLM2_INTERPRETER + "\n" + INTERNLM2_INTERPRETER_CALL})
        return msgs

    def parse(self, reply):
        text = truncate_at(reply.text, ("<|im_end|>",))
        start = text.find(ACTION_START)
        if start == -1:
            return Final("", text.strip())
        thought = text[:start].strip()
        body = text[start + len(ACTION_START):]
        end = body.find(ACTION_END)
        body = body if end == -1 else body[:end]
        if body.startswith(INTERPRETER):
            code = _strip_fence(body[len(INTERPRETER):])
            if not code.strip():
                return Malformed(thought, "The interpreter call has no code.")
            return Act(thought, (ToolCall(self.interpreter_tool, {"code": code}),))
        if not body.startswith(PLUGIN):
            return Malformed(thought, f"`{ACTION_START}` must be followed by `{PLUGIN}` or `{INTERPRETER}`.")
        raw = body[len(PLUGIN):].strip()
        try:
            call = json.loads(_strip_fence(raw))
        except json.JSONDecodeError as e:
            return Malformed(thought, f"The plugin call is not valid JSON ({e.msg} at position {e.pos}); write "
                                      '{"name": <tool name>, "parameters": {...}}.')
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return Malformed(thought, 'The plugin call must be a JSON object {"name": <tool name>, "parameters": {...}}.')
        args = call.get("parameters", call.get("arguments", {}))
        return Act(thought, (ToolCall(call["name"], args),))

    def action_format(self, tools, required=False):
        # a plugin call {"name": ..., "parameters": <schema-valid JSON>} or an interpreter cell in a
        # ```python fence; free text (the answer) unless required. Markup written as text: a tokenizer
        # holding <|action_start|> as a special token cannot be constrained this way.
        calls = []
        for t in tools:
            if t.spec.name == self.interpreter_tool:
                calls.append({"type": "tag", "begin": f"{ACTION_START}{INTERPRETER}\n```python\n",
                              "content": {"type": "any_text", "excludes": ["```"]}, "end": f"\n```{ACTION_END}"})
            else:
                head = f'{ACTION_START}{PLUGIN}\n{{"name": {json.dumps(t.spec.name, ensure_ascii=False)}, "parameters": '
                calls.append({"type": "tag", "begin": head, "content": json_schema_tag(t.spec.json_schema()),
                              "end": "}" + ACTION_END})
        if required:  # the call right away
            fmt = calls[0] if len(calls) == 1 else {"type": "or", "elements": calls}
        else:
            fmt = {"type": "triggered_tags", "triggers": [ACTION_START], "tags": calls, "stop_after_first": True}
        return json.dumps({"type": "structural_tag", "format": fmt}, ensure_ascii=False)

    def answer_format(self):
        return json.dumps({"type": "structural_tag", "format": {"type": "any_text", "excludes": [ACTION_START]}})

    def call_reply(self, thought, call):
        if call.name == self.interpreter_tool:
            code = call.arguments if isinstance(call.arguments, str) else call.arguments["code"]
            return LLMReply(f"{thought}{ACTION_START}{INTERPRETER}\n```python\n{code}\n```{ACTION_END}")
        body = json.dumps({"name": call.name, "parameters": call.arguments}, ensure_ascii=False)
        return LLMReply(f"{thought}{ACTION_START}{PLUGIN}\n{body}{ACTION_END}")

    def answer_reply(self, thought, answer):
        return LLMReply(answer)

    def assistant_message(self, reply, parsed):
        text = truncate_at(reply.text, ("<|im_end|>",)).rstrip()
        if isinstance(parsed, Act) and ACTION_START in text and not text.endswith(ACTION_END):
            text += ACTION_END  # the stop string cut it off; the conversation keeps well-formed markup
        return {"role": "assistant", "content": text}

    def observation_messages(self, results):
        return [{"role": "environment", "name": "interpreter" if call.name == self.interpreter_tool else "plugin",
                 "content": text} for call, text in results]

    def error_messages(self, error):
        return [{"role": "environment", "name": "plugin", "content": f"Error: {error}"}]


# ----------------------------------------------------------------------------- OpenAI tools


@dataclass(frozen=True)
class OpenAITools(Protocol):
    name: str = "openai"
    stop: tuple[str, ...] = ()

    def system_messages(self, tools, system=None):
        return [{"role": "system", "content": system}] if system else []

    def llm_tools(self, tools):
        return [t.spec.openai() for t in tools]

    def action_format(self, tools, required=False):
        # a local backend renders calls as Hermes <tool_call> blocks and reads them back from its text
        calls = [(f'<tool_call>\n{{"name": {json.dumps(t.spec.name, ensure_ascii=False)}, "arguments": ',
                  t.spec.json_schema(), "}\n</tool_call>") for t in tools]
        return tool_call_tag(calls, trigger="<tool_call>", required=required, text_before=False)

    def answer_format(self):
        return json.dumps({"type": "structural_tag", "format": {"type": "any_text", "excludes": ["<tool_call>"]}})

    def call_reply(self, thought, call):
        args = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments, ensure_ascii=False)
        return LLMReply(thought, (ToolCall(call.name, args, call.id or "call_0"),))

    def answer_reply(self, thought, answer):
        return LLMReply(answer)

    def parse(self, reply):
        if not reply.tool_calls:
            return Final("", reply.text.strip())
        calls = []
        for c in reply.tool_calls:
            if isinstance(c.arguments, str):
                try:
                    args = json.loads(c.arguments) if c.arguments.strip() else {}
                except json.JSONDecodeError as e:
                    calls.append(ToolCall(c.name, c.arguments, c.id, f"the arguments are not valid JSON: {e.msg}"))
                    continue
                c = ToolCall(c.name, args, c.id, c.error)
            calls.append(c)
        return Act(reply.text.strip(), tuple(calls))

    def assistant_message(self, reply, parsed):
        msg: dict = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            msg["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {
                    "name": c.name,
                    "arguments": c.arguments if isinstance(c.arguments, str) else json.dumps(c.arguments)}}
                for c in reply.tool_calls
            ]
        return msg

    def observation_messages(self, results):
        return [{"role": "tool", "tool_call_id": call.id, "content": text} for call, text in results]


PROTOCOLS: dict[str, type[Protocol]] = {"react": ReAct, "internlm2": InternLM2, "openai": OpenAITools}


def get_protocol(protocol: str | Protocol) -> Protocol:
    """A protocol instance from a name in PROTOCOLS (or the instance itself)."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]()
