"""Chat requests to prompts: role checks, the model's chat template (tools included), forced tool calls."""

from __future__ import annotations

import json
from dataclasses import dataclass

from puyu_jax.chat_templates import ROLES, TEMPLATES, apply_chat_template, stop_strings
from puyu_jax.serve.api.errors import APIError
from puyu_jax.serve.api.protocol import ChatCompletionRequest, ChatMessage
from puyu_jax.serve.api.tool_parsers import ToolCallFormat, detect_format
from puyu_jax.serve.guided import tool_call_tag

_TOOLS_PREAMBLE = ("You may call one or more functions to assist with the user query.\n\n"
                   "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{specs}\n"
                   "</tools>\n\n{how}")


def resolve_template(tokenizer, model_chat_template: str, override: str = "") -> str:
    """The chat template to use: an explicit name or jinja source, else the tokenizer's own,
    else the model config's named template."""
    if override:
        return override
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    return model_chat_template


@dataclass
class ChatPrompt:
    """A rendered chat request. `prefill` was appended to the prompt to force a tool call."""

    ids: list[int]
    text: str
    tools_active: bool
    prefill: str = ""


class ChatPrompter:
    """Renders chat requests with one chat template and knows its tool-call markup.

    Args:
      tokenizer: the model's tokenizer.
      template: a name in `chat_templates.TEMPLATES` or jinja source.
    """

    def __init__(self, tokenizer, template: str):
        self.tokenizer = tokenizer
        self.template = template
        self.roles = ROLES.get(template) if template in TEMPLATES else None
        self.fmt: ToolCallFormat = detect_format(self._render)
        try:
            self.stops = stop_strings(template)
        except ValueError:
            self.stops = []
        special = tokenizer.special_tokens
        # markup made of special tokens only shows in the text when special tokens are kept
        self.tools_keep_special = any(s in self.fmt.start + self.fmt.end for s in special if s)

    def _render(self, messages: list[dict], tools: list[dict] | None = None, add_generation_prompt: bool = True) -> str:
        return apply_chat_template(self.tokenizer, messages, template=self.template, tools=tools,
                                   add_generation_prompt=add_generation_prompt)

    def build(self, req: ChatCompletionRequest) -> ChatPrompt:
        """The prompt of a chat request (raises APIError for conversations it cannot render)."""
        check_roles(req.messages)
        tools = req.tools or []
        choice = req.tool_choice
        if choice is not None and choice != "none" and not tools:
            raise APIError(400, "tool_choice needs tools", param="tool_choice")
        forced: str | None = None
        if not isinstance(choice, str) and choice is not None:
            names = [t.function.name for t in tools]
            if choice.function.name not in names:
                raise APIError(422, f"tool_choice names {choice.function.name!r}, which is not among the tools {names}",
                               param="tool_choice")
            forced = choice.function.name
        active = bool(tools) and choice != "none"
        messages = [self._message(m) for m in req.messages]
        specs = [t.function.model_dump(exclude_none=True) for t in tools] if active else []
        if active and not self.fmt.native_tools:
            text = _TOOLS_PREAMBLE.format(specs="\n".join(json.dumps(s, ensure_ascii=False) for s in specs),
                                          how=self.fmt.instructions())
            if messages and messages[0]["role"] == "system":
                messages[0] = {**messages[0], "content": messages[0]["content"] + "\n\n" + text}
            else:
                messages.insert(0, {"role": "system", "content": text})
        tool_schemas = [{"type": "function", "function": s} for s in specs] if active and self.fmt.native_tools else None
        try:
            text = self._render(messages, tools=tool_schemas, add_generation_prompt=True)
        except Exception as e:  # jinja's raise_exception, unknown roles
            raise APIError(422, f"the chat template cannot render these messages: {e}", param="messages") from e
        prefill = ""
        if active and (forced is not None or choice == "required"):
            prefill = self.fmt.prefill(forced)
        text += prefill
        bos = self.tokenizer.bos_token
        add_bos = False if bos and text.startswith(bos) else None
        ids = self.tokenizer.encode(text, add_bos=add_bos, allow_special=True)
        return ChatPrompt(ids, text, active, prefill)

    def tool_constraint(self, req: ChatCompletionRequest, prompt: ChatPrompt) -> str | None:
        """The structural tag that makes tool calls well-formed while decoding: the call's markup
        around JSON valid under the tool's `parameters` schema. `required` / a named tool: exactly
        one call (after the prefill); `auto`: free text, or calls. None when tools are off, or when
        the markup cannot be written as text (special tokens, or arguments before the name)."""
        if not prompt.tools_active or self.tools_keep_special or not self.fmt.between:
            return None
        fmt = self.fmt
        choice = req.tool_choice
        named = None if choice is None or isinstance(choice, str) else choice.function.name
        calls = [(f"{fmt.start}{fmt.head}{json.dumps(t.function.name, ensure_ascii=False)}{fmt.between}",
                  t.function.parameters or {"type": "object"}, "}" + fmt.end)
                 for t in req.tools or [] if named is None or t.function.name == named]
        if prompt.prefill:
            return tool_call_tag(calls, required=True, prefix=prompt.prefill)
        return tool_call_tag(calls, trigger=fmt.marker)

    def _message(self, m: ChatMessage) -> dict:
        role = "system" if m.role == "developer" else m.role
        d: dict = {"role": role, "content": m.text()}
        if m.name:
            d["name"] = m.name
        if m.tool_calls:
            calls = [{"id": c.id, "type": "function",
                      "function": {"name": c.function.name, "arguments": c.function.arguments}} for c in m.tool_calls]
            if self.fmt.native_calls:
                d["tool_calls"] = calls
            else:
                written = "\n".join(self.fmt.render_call(c["function"]["name"], c["function"]["arguments"])
                                    for c in calls)
                d["content"] = (d["content"] + "\n" if d["content"] else "") + written
        if role == "tool":
            if m.tool_call_id:
                d["tool_call_id"] = m.tool_call_id
            if self.roles is not None and "tool" not in self.roles:
                d = {"role": "user", "content": "<tool_response>\n" + d["content"] + "\n</tool_response>"}
        return d


def check_roles(messages: list[ChatMessage]) -> None:
    """System turns come first; a tool result follows an assistant's tool call; the user or a tool speaks last."""
    if not messages:
        raise APIError(400, "messages must not be empty", param="messages")
    seen_other = False
    for i, m in enumerate(messages):
        if m.role in ("system", "developer"):
            if seen_other:
                raise APIError(422, f"messages[{i}]: a {m.role} message must come before the conversation",
                               param=f"messages.{i}.role")
            continue
        seen_other = True
        if m.role == "tool":
            prev = messages[i - 1] if i else None
            if prev is None or not (prev.role == "tool" or (prev.role == "assistant" and prev.tool_calls)):
                raise APIError(422, f"messages[{i}]: a tool message must follow an assistant message with tool_calls",
                               param=f"messages.{i}.role")
    if not seen_other:
        raise APIError(422, "messages hold only system messages; add a user message", param="messages")
    if messages[-1].role not in ("user", "tool"):
        raise APIError(422, f"the last message must be from the user or a tool, not {messages[-1].role!r}",
                       param=f"messages.{len(messages) - 1}.role")
