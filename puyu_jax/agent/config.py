"""`AgentConfig`: one agent run (`puyu agent`), and `build_agent` turning it into live parts."""

from __future__ import annotations

from dataclasses import dataclass, field

from puyu_jax.agent.protocols import PROTOCOLS, Protocol, get_protocol
from puyu_jax.agent.tool import Tool
from puyu_jax.agent.tools import TOOL_NAMES, SandboxLimits, load_tools
from puyu_jax.serve.config import GenerationConfig

__all__ = ["AgentConfig", "build_agent", "build_tools"]


@dataclass(frozen=True)
class AgentConfig:
    """An agent: which model, which protocol, which tools, how many turns."""

    llm: str = "smollm2"  # a model source (run in-process) or the http(s) URL of an OpenAI-compatible server
    model: str = ""  # served model name at a URL ("" = the server's first model)
    api_key: str = ""  # of the LLM server
    protocol: str = "react"  # react | internlm2 | openai
    tools: tuple[str, ...] = ("python", "calculator")  # local tools (puyu_jax.agent.tools.TOOL_NAMES)
    remote_tools: tuple[str, ...] = ()  # tool server URLs: a server root (all its tools) or .../tools/NAME
    remote_api_key: str = ""
    max_turns: int = 5
    constrain: bool = True  # local model: decode each reply under the protocol's action grammar
    require_tool: bool = False  # with constrain: the first reply must call a tool
    example: bool = False  # show a worked example of a tool call (Protocol.example_messages) before the question
    system: str = ""  # an optional system message
    template: str = ""  # local model: chat template name or jinja source ("" = the tokenizer's)
    dtype: str = "float32"  # local model compute dtype
    sampling: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=256))
    search_dir: str = ""  # documents for the `search` tool
    out_dir: str = ""  # where file-producing tools write ("" = temporary folders)
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol={self.protocol!r} must be one of {sorted(PROTOCOLS)}")
        if self.max_turns < 1:
            raise ValueError(f"max_turns={self.max_turns} must be >= 1")
        bad = [t for t in self.tools if t not in TOOL_NAMES]
        if bad:
            raise ValueError(f"tools: unknown {bad}; known: {list(TOOL_NAMES)}")


def build_tools(cfg: AgentConfig) -> list[Tool]:
    """The local tools, then every remote tool of `cfg`."""
    tools = load_tools(list(cfg.tools), search_dir=cfg.search_dir or None, out_dir=cfg.out_dir or None,
                       limits=cfg.sandbox)
    if cfg.remote_tools:
        from puyu_jax.agent.remote import RemoteTool

        key = cfg.remote_api_key or None
        for url in cfg.remote_tools:
            if "/tools/" in url:
                tools.append(RemoteTool.from_url(url, api_key=key))
            else:
                tools += RemoteTool.from_server(url, api_key=key)
    return tools


def build_agent(cfg: AgentConfig):
    """(llm, tools, protocol) for a config; loads the model or connects to the server."""
    from puyu_jax.agent.llm import make_llm

    tools = build_tools(cfg)  # first: a tool that cannot run here fails before a model is loaded
    llm = make_llm(cfg.llm, model=cfg.model, api_key=cfg.api_key, template=cfg.template or None,
                   sampling=cfg.sampling, dtype=cfg.dtype)
    protocol: Protocol = get_protocol(cfg.protocol)
    return llm, tools, protocol
