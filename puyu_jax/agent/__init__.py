"""Agents (Lagent + AgentLego on JAX): protocols, a functional core, typed tools, a tool server.

    from puyu_jax.agent import run, ReplayLLM, OpenAILLM, LocalLLM, load_tools
    state = run("What is 2**100?", LocalLLM("smollm2"), load_tools("python,calculator"), "react")
"""

from puyu_jax.agent.config import AgentConfig, build_agent, build_tools
from puyu_jax.agent.core import AgentState, call_tool, init_state, run, step, stream
from puyu_jax.agent.llm import LocalLLM, OpenAILLM, ReplayLLM, make_llm
from puyu_jax.agent.protocols import PROTOCOLS, InternLM2, OpenAITools, Protocol, ReAct, get_protocol
from puyu_jax.agent.remote import RemoteTool
from puyu_jax.agent.server import create_app, serve
from puyu_jax.agent.tool import Audio, File, Image, Param, Tool, ToolResult, ToolSpec, tool
from puyu_jax.agent.tools import TOOL_NAMES, SandboxLimits, load_tools
from puyu_jax.agent.types import Act, Event, Final, LLMReply, Malformed, ToolCall

__all__ = [
    "AgentConfig", "build_agent", "build_tools", "AgentState", "call_tool", "init_state", "run", "step", "stream",
    "LocalLLM", "OpenAILLM", "ReplayLLM", "make_llm", "PROTOCOLS", "InternLM2", "OpenAITools", "Protocol", "ReAct",
    "get_protocol", "RemoteTool", "create_app", "serve", "Audio", "File", "Image", "Param", "Tool", "ToolResult",
    "ToolSpec", "tool", "TOOL_NAMES", "SandboxLimits", "load_tools", "Act", "Event", "Final", "LLMReply",
    "Malformed", "ToolCall",
]
