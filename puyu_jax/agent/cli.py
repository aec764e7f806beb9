"""`puyu agent` and `puyu tools`: thin shells over puyu_jax.agent.

    puyu agent "question" --tools python,calculator --llm URL|MODEL [--protocol react|internlm2|openai]
    puyu tools serve --tools python,calculator --host 127.0.0.1 --port 8765 [--api-key KEY]
    (both take --unsafe-sandbox: run the Python tool without namespaces where bubblewrap cannot run; loud)
    puyu tools list [--tools ...] [--json]
"""

from __future__ import annotations

import json
import sys


def _agent_overrides(args) -> list[str]:
    out = []
    for flag, key in (("llm", "llm"), ("model", "model"), ("api_key", "api_key"), ("protocol", "protocol"),
                      ("max_turns", "max_turns"), ("system", "system"), ("template", "template"),
                      ("search_dir", "search_dir"), ("max_new_tokens", "sampling.max_new_tokens"),
                      ("temperature", "sampling.temperature"), ("remote_api_key", "remote_api_key")):
        value = getattr(args, flag)
        if value is not None:
            out.append((key, value))
    if args.tools is not None:
        out.append(("tools", [t.strip() for t in args.tools.split(",") if t.strip()]))
    if args.remote:
        out.append(("remote_tools", list(args.remote)))
    if args.unsafe_sandbox:
        out.append(("sandbox.unsafe", True))
    return out


UNSAFE_WARNING = ("WARNING: --unsafe-sandbox: model-written Python runs WITHOUT namespaces; it can read every file, "
                  "process environment and /proc entry this user can (API keys included)")


def _print_event(console, event) -> None:
    from rich.panel import Panel
    from rich.syntax import Syntax
    from rich.text import Text

    if event.kind == "thought":
        console.print(Text(f"[turn {event.turn}] thought: ", style="bold magenta") + Text(event.text, style="italic"))
    elif event.kind == "action":
        body = (Syntax(event.text, "python", word_wrap=True) if event.tool and event.tool.startswith("python")
                else Text(event.text))
        console.print(Panel(body, title=f"action: {event.tool}", title_align="left", border_style="cyan"))
    elif event.kind == "observation":
        style = "green" if event.data.get("ok", True) else "red"
        console.print(Panel(Text(event.text), title=f"observation: {event.tool}", title_align="left", border_style=style))
    elif event.kind == "final":
        console.print(Text("final answer: ", style="bold green") + Text(event.text, style="bold"))
    else:
        console.print(Text(f"[turn {event.turn}] error: ", style="bold red") + Text(event.text))


def _cmd_agent(args) -> int:
    from rich.console import Console

    from puyu_jax.agent.config import AgentConfig, build_agent
    from puyu_jax.agent.core import stream
    from puyu_jax.agent.tools import SandboxUnavailable
    from puyu_jax.config import load_config, save_run_config

    cfg = load_config(AgentConfig, args.config, _agent_overrides(args) + list(args.overrides))
    if cfg.sandbox.unsafe:
        print(UNSAFE_WARNING, file=sys.stderr)
    if args.out:
        save_run_config(cfg, args.out)
    console = Console(stderr=False, highlight=False)
    console.print(f"[dim]agent: llm={cfg.llm} protocol={cfg.protocol} tools={','.join(cfg.tools) or '-'}"
                  f"{' remote=' + ','.join(cfg.remote_tools) if cfg.remote_tools else ''}[/dim]")
    try:
        llm, tools, protocol = build_agent(cfg)
    except (ValueError, SandboxUnavailable) as e:  # e.g. a tool that needs set-up it was not given
        print(f"puyu: error: {e}", file=sys.stderr)
        return 2
    console.print(f"[bold]question:[/bold] {args.question}")
    state = None
    for event, state in stream(args.question, llm, tools, protocol, max_turns=cfg.max_turns, system=cfg.system or None,
                               constrain=cfg.constrain, require_tool=cfg.require_tool, example=cfg.example):
        _print_event(console, event)
    if args.out and state is not None:
        from pathlib import Path

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "trajectory.json").write_text(json.dumps({
            "question": args.question, "answer": state.answer, "finished": state.finished, "turns": state.turn,
            "events": [{"kind": e.kind, "turn": e.turn, "tool": e.tool, "text": e.text} for e in state.trajectory],
            "messages": list(state.messages)}, ensure_ascii=False, indent=1, default=str))
    return 0


def _cmd_tools_serve(args) -> int:
    from puyu_jax.agent.server import serve
    from puyu_jax.agent.tools import SandboxLimits, SandboxUnavailable, load_tools

    if args.unsafe_sandbox:
        print(UNSAFE_WARNING, file=sys.stderr)
    try:
        tools = load_tools(args.tools, search_dir=args.search_dir, limits=SandboxLimits(unsafe=args.unsafe_sandbox))
    except (ValueError, SandboxUnavailable) as e:
        print(f"puyu: error: {e}", file=sys.stderr)
        return 2
    print(f"serving {', '.join(t.spec.name for t in tools)} on http://{args.host}:{args.port}"
          f"{' (API key required)' if args.api_key else ''}", file=sys.stderr)
    serve(tools, host=args.host, port=args.port, api_key=args.api_key)
    return 0


def _cmd_tools_list(args) -> int:
    from puyu_jax.agent.tools import TOOL_NAMES, SandboxUnavailable, load_tools

    if args.url:
        from puyu_jax.agent.remote import RemoteTool

        tools = RemoteTool.from_server(args.url, api_key=args.api_key)
    else:
        names = args.tools or ",".join(n for n in TOOL_NAMES if n not in ("search", "python_session"))
        try:
            tools = load_tools(names, search_dir=args.search_dir)
        except (ValueError, SandboxUnavailable) as e:
            print(f"puyu: error: {e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps([t.spec.to_dict() for t in tools], ensure_ascii=False, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tools")
    for col in ("name", "parameters", "returns", "description"):
        table.add_column(col, overflow="fold")
    for t in tools:
        s = t.spec
        params = ", ".join(f"{p.name}: {p.type}{'' if p.required else ' = ' + repr(p.default)}" for p in s.params)
        table.add_row(s.name, params, ", ".join(r.type for r in s.returns), s.description)
    Console().print(table)
    return 0


def add_parser(subparsers) -> None:
    """Adds the `agent` and `tools` commands to the main `puyu` parser's subparsers."""
    ag = subparsers.add_parser(
        "agent",
        help="answer a question with an LLM agent that calls tools (ReAct, InternLM2 or OpenAI function calling)",
        description="Runs an agent on QUESTION and prints its trajectory: thoughts, actions, observations, answer.",
        epilog="Any AgentConfig field can also be set as key=value, e.g. sandbox.timeout_s=5 sampling.max_new_tokens=128.",
    )
    ag.add_argument("question")
    ag.add_argument("--llm", help="model source run in-process (smollm2, a checkpoint dir, .gguf) or the URL of an "
                                  "OpenAI-compatible server")
    ag.add_argument("--model", help="served model name at --llm URL (default: the server's first)")
    ag.add_argument("--api-key", help="API key of the LLM server")
    ag.add_argument("--tools", help="comma-separated local tools: python, python_session, calculator, search, tts, "
                                    "ocr, image ('' for none)")
    ag.add_argument("--remote", action="append", help="a tool server URL (all its tools) or .../tools/NAME; repeatable")
    ag.add_argument("--remote-api-key", help="API key of the tool server(s)")
    ag.add_argument("--protocol", choices=("react", "internlm2", "openai"))
    ag.add_argument("--max-turns", type=int)
    ag.add_argument("--system", help="a system message")
    ag.add_argument("--template", help="chat template (name or jinja) for an in-process model")
    ag.add_argument("--search-dir", help="folder of documents for the search tool")
    ag.add_argument("-n", "--max-new-tokens", type=int, help="tokens per model reply at most")
    ag.add_argument("-t", "--temperature", type=float)
    ag.add_argument("--config", help="an AgentConfig YAML to start from (see configs/agent/)")
    ag.add_argument("--out", help="write config.yaml, config.hash and trajectory.json here")
    ag.add_argument("--unsafe-sandbox", action="store_true",
                    help="run the Python tool without Linux namespaces where bubblewrap cannot run (the code can then "
                         "read what this user can; same as sandbox.unsafe=true)")
    ag.add_argument("overrides", nargs="*", help="key=value config overrides")
    ag.set_defaults(fn=_cmd_agent)

    tl = subparsers.add_parser("tools", help="serve or list agent tools")
    tsub = tl.add_subparsers(dest="tools_command", metavar="SUBCOMMAND", required=True)
    sv = tsub.add_parser("serve", help="serve tools over HTTP with their schemas (for RemoteTool or any client)")
    sv.add_argument("--tools", default="python,calculator", help="comma-separated tool names")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8765)
    sv.add_argument("--api-key", help="require this key (Authorization: Bearer KEY or X-API-Key)")
    sv.add_argument("--search-dir", help="folder of documents for the search tool")
    sv.add_argument("--unsafe-sandbox", action="store_true",
                    help="run the Python tool without Linux namespaces where bubblewrap cannot run (the code can then "
                         "read what this user can)")
    sv.set_defaults(fn=_cmd_tools_serve)
    ls = tsub.add_parser("list", help="list tools with their typed parameters and returns")
    ls.add_argument("--tools", help="comma-separated tool names (default: all that need no set-up)")
    ls.add_argument("--search-dir", help="folder of documents for the search tool")
    ls.add_argument("--url", help="list the tools of a running tool server instead")
    ls.add_argument("--api-key", help="API key of that server")
    ls.add_argument("--json", action="store_true", help="print the JSON schemas")
    ls.set_defaults(fn=_cmd_tools_list)
