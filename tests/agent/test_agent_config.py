"""AgentConfig: the shipped YAMLs load, bad values name themselves, build_agent wires the parts."""

from pathlib import Path

import pytest

from puyu_jax.agent import AgentConfig, OpenAILLM, ReAct, build_agent
from puyu_jax.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "agent"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_agent_configs_load(path):
    cfg = load_config(AgentConfig, path)
    assert cfg.max_turns >= 1


@pytest.mark.parametrize("override, message", [
    ("protocol=xml", "protocol='xml' must be one of"), ("max_turns=0", "max_turns=0"),
    ("tools=[python,abacus]", "unknown ['abacus']"), ("sandbox.timeout=3", "timeout"),
])
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(AgentConfig, None, [override])


def test_build_agent_with_a_server(openai_replay):
    url, _ = openai_replay([])
    cfg = load_config(AgentConfig, None, [f"llm={url}", "protocol=react", "tools=[calculator]", "sandbox.memory_mb=256"])
    llm, tools, protocol = build_agent(cfg)
    assert isinstance(llm, OpenAILLM) and llm.model == "replay-model" and llm.max_tokens == 256
    assert [t.spec.name for t in tools] == ["calculator"] and isinstance(protocol, ReAct)
