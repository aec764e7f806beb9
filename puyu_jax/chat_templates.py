"""Chat templates, rendered with jinja2 the way transformers renders them.

Templates see the same environment as in transformers' ``apply_chat_template``: a sandboxed jinja2
environment with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, ``raise_exception``,
``strftime_now`` and a ``tojson`` filter that keeps non-ASCII text (``ensure_ascii=False``).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

if TYPE_CHECKING:
    from puyu_jax.tokenizer import Tokenizer

__all__ = ["TEMPLATES", "ROLES", "render_chat", "apply_chat_template", "stop_strings"]

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# InternLM2-chat: BOS, ChatML turns, and its plugin markup for tools (see InternLM's chat_format.md).
# OpenAI-style messages are mapped on: `tools` -> a `system name=<|plugin|>` turn, assistant `tool_calls` ->
# `<|action_start|><|plugin|>` blocks, role `tool` -> the `environment name=<|plugin|>` turn.
_INTERNLM2 = (
    "{{ '<s>' }}"
    "{% set ns = namespace(tools_done=false, fns=[]) %}"
    "{% for t in (tools or []) %}"
    "{% set ns.fns = ns.fns + [t['function'] if t['function'] is defined else t] %}"
    "{% endfor %}"
    "{% for message in messages %}"
    "{% if ns.fns and not ns.tools_done and message['role'] != 'system' %}"
    "{{ '<|im_start|>system name=<|plugin|>\\n' + ns.fns | tojson + '<|im_end|>\\n' }}"
    "{% set ns.tools_done = true %}"
    "{% endif %}"
    "{% if message['role'] == 'tool' or message['role'] == 'environment' %}"
    "{{ '<|im_start|>environment name=<|' + (message['name'] if message.get('name') in ('plugin', 'interpreter') else 'plugin') + '|>\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{% for call in message['tool_calls'] %}"
    "{% set fn = call['function'] if call['function'] is defined else call %}"
    "{% set args = fn['arguments'] if fn['arguments'] is defined else fn['parameters'] %}"
    "{{ '<|action_start|><|plugin|>\\n{\"name\": ' + fn['name'] | tojson + ', \"parameters\": ' }}"
    "{{ (args if args is string else args | tojson) + '}<|action_end|>\\n' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if ns.fns and not ns.tools_done %}"
    "{{ '<|im_start|>system name=<|plugin|>\\n' + ns.fns | tojson + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Meta's published Llama-2-chat format (as in meta-llama/Llama-2-7b-chat-hf), BOS/EOS written literally.
_LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '<s>[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' </s>' }}{% endif %}"
    "{% endfor %}"
)

# Meta-Llama-3-Instruct; a `tool` message is rendered as Llama-3.1's `ipython` role.
_LLAMA3 = (
    "{{ '<|begin_of_text|>' }}"
    "{% for message in messages %}"
    "{% set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{ '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Base models: one `role: content` line per message.
_PLAIN = (
    "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)

#: Named templates: name -> jinja source.
TEMPLATES: dict[str, str] = {
    "internlm2": _INTERNLM2,
    "chatml": _CHATML,
    "llama-2": _LLAMA2,
    "llama-3": _LLAMA3,
    "plain": _PLAIN,
}

_ANY_ROLE = frozenset({"system", "user", "assistant", "tool", "environment", "function", "ipython", "developer"})
#: Roles each named template accepts; a template given as source accepts any role in ``_ANY_ROLE``.
ROLES: dict[str, frozenset[str]] = {
    "internlm2": frozenset({"system", "user", "assistant", "tool", "environment"}),
    "chatml": frozenset({"system", "user", "assistant", "tool"}),
    "llama-2": frozenset({"system", "user", "assistant"}),
    "llama-3": frozenset({"system", "user", "assistant", "tool", "ipython"}),
    "plain": frozenset({"system", "user", "assistant", "tool"}),
}

_STOPS: dict[str, list[str]] = {
    "internlm2": ["<|im_end|>", "<|action_end|>"],
    "chatml": ["<|im_end|>"],
    "llama-2": ["</s>"],
    "llama-3": ["<|eot_id|>", "<|eom_id|>"],
    "plain": ["\nuser:", "\nsystem:"],
}


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env.from_string(source)


def _text_content(content: Any) -> str:
    """Flatten a message's content (None, a string, or a list of ``{"type": "text", "text": ...}`` parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def _validate(messages: list[dict], roles: frozenset[str]) -> None:
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"message {i} is not a dict: {m!r}")
        role = m.get("role")
        if role not in roles:
            raise ValueError(f"message {i} has unknown role {role!r}; expected one of {sorted(roles)}")
        if "content" not in m and not m.get("tool_calls"):
            raise ValueError(f"message {i} (role {role!r}) has no 'content'")


def render_chat(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
    tools: list[dict] | None = None,
    **kwargs: Any,
) -> str:
    """Render a conversation to the prompt text.

    Args:
        template: a name in :data:`TEMPLATES` or a jinja source string (e.g. a checkpoint's chat template).
        messages: ``[{"role": ..., "content": ...}, ...]``; assistant messages may carry OpenAI-style
            ``tool_calls`` and tool results use role ``tool``.
        add_generation_prompt: end with the header that opens the assistant's turn.
        bos_token, eos_token: values of the template variables of the same names.
        tools: JSON schemas of the tools the model may call (OpenAI style or bare function schemas).
        **kwargs: extra template variables.

    Returns:
        The rendered text.

    Raises:
        ValueError: a message is malformed or has a role the template does not know (names the message index).
    """
    named = template in TEMPLATES
    _validate(messages, ROLES[template] if named else _ANY_ROLE)
    if named:
        messages = [{**m, "content": _text_content(m.get("content"))} for m in messages]
    source = TEMPLATES[template] if named else template
    return _compile(source).render(
        messages=messages,
        tools=tools,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
        **kwargs,
    )


def apply_chat_template(
    tokenizer: Tokenizer,
    messages: list[dict],
    *,
    template: str | None = None,
    add_generation_prompt: bool = True,
    tools: list[dict] | None = None,
    tokenize: bool = False,
) -> str | list[int]:
    """Render ``messages`` with a tokenizer's chat template (or a named one), optionally to ids.

    Args:
        tokenizer: supplies the default template and the special-token variables.
        messages: the conversation.
        template: None for ``tokenizer.chat_template``, else a name in :data:`TEMPLATES` or jinja source.
        add_generation_prompt: end with the assistant header.
        tools: tool schemas passed to the template.
        tokenize: return token ids instead of text (special tokens parsed; BOS added per
            ``tokenizer.add_bos`` unless the text already starts with the BOS token).

    Returns:
        The prompt text, or its ids when ``tokenize``.
    """
    source = template if template is not None else tokenizer.chat_template
    if source is None:
        raise ValueError("the tokenizer has no chat_template; pass template= (one of %s)" % sorted(TEMPLATES))
    variables = {
        name: getattr(tokenizer, name) or ""
        for name in ("bos_token", "eos_token", "pad_token", "unk_token")
    }
    text = render_chat(source, messages, add_generation_prompt=add_generation_prompt, tools=tools, **variables)
    if not tokenize:
        return text
    bos = tokenizer.bos_token
    add_bos = False if bos and text.startswith(bos) else None
    return tokenizer.encode(text, add_bos=add_bos, allow_special=True)


def stop_strings(template_name: str) -> list[str]:
    """Strings that end the assistant's turn for a template.

    Args:
        template_name: a name in :data:`TEMPLATES`, or a jinja source (its known turn-end markers are returned).

    Returns:
        The turn terminators, e.g. ``["<|im_end|>"]`` for ``"chatml"``.
    """
    if template_name in _STOPS:
        return list(_STOPS[template_name])
    markers = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "</s>")
    found = [m for m in markers if m in template_name]
    if not found:
        raise ValueError(f"unknown template {template_name!r}; named templates: {sorted(TEMPLATES)}")
    return found
