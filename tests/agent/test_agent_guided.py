"""Constrained agent actions: whatever a model writes under a protocol's `action_format`, the reply
parses into a call of a declared tool with schema-valid arguments, or a final answer."""

import functools
import sys
from pathlib import Path
from typing import Annotated

import jsonschema
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from serve_api_helpers import smollm2_tokenizer, tiny_model_config  # noqa: E402

from puyu_jax.agent import LLMReply, load_tools, run  # noqa: E402
from puyu_jax.agent.llm import LocalLLM, parse_hermes_tool_calls  # noqa: E402
from puyu_jax.agent.protocols import get_protocol  # noqa: E402
from puyu_jax.agent.tool import Tool  # noqa: E402
from puyu_jax.agent.types import Act, Final  # noqa: E402
from puyu_jax.serve.config import GenerationConfig  # noqa: E402
from puyu_jax.serve.guided import Guides, allocate_bitmask, allowed_ids  # noqa: E402

TOOLS = load_tools("python,calculator")
SCHEMAS = {t.spec.name: t.spec.json_schema() for t in TOOLS}


@functools.lru_cache(maxsize=1)
def _closers(tok) -> np.ndarray:
    """[vocab] bool: tokens that can close a string, an object or a line (keeps random walks short)."""
    return np.array([any(c in tok.decode([i]) for c in '"}\n`') for i in range(tok.vocab_size)])


def _walk(guide, tok, rng, script: str = "", limit: int = 800) -> list[int]:
    """Random tokens the grammar allows, to its end: `script`'s tokens while the grammar allows them,
    else a random allowed token (half the time one that can close a string or object)."""
    target = tok.encode(script) if script else []
    eos = np.array(sorted(tok.eos_ids))
    closers = _closers(tok)
    mask = allocate_bitmask(1, tok.vocab_size)
    out: list[int] = []
    while not guide.terminated and len(out) < limit:
        guide.fill(mask, 0)
        ok = allowed_ids(mask[0], tok.vocab_size)
        allowed = np.zeros(tok.vocab_size, bool)
        allowed[ok] = True
        n = len(out)
        if n < len(target) and allowed[target[n]]:
            t = target[n]
        elif allowed[eos].any() and (target or rng.random() < 0.3):
            t = int(eos[allowed[eos]][0])  # end (at once after a script)
        else:
            close = ok[closers[ok]]
            t = int(rng.choice(close if len(close) and rng.random() < 0.5 else ok))
        assert guide.accept(t)
        out.append(t)
    assert guide.terminated, f"the walk did not reach the end of the grammar: {tok.decode(out)!r}"
    return out


def _reply(proto, text: str) -> LLMReply:
    if proto.name == "openai":
        rest, calls = parse_hermes_tool_calls(text)
        return LLMReply(rest, calls)
    return LLMReply(text)


@pytest.mark.parametrize("protocol", ["react", "internlm2", "openai"])
def test_agent_action_format_always_parses(protocol):
    """Random walks through each protocol's action grammar (calls required, then free) parse into
    a declared tool's call with schema-valid arguments, or (when not required) a final answer."""
    tok = smollm2_tokenizer()
    guides = Guides.for_tokenizer(tok, tok.vocab_size, tok.eos_ids)
    proto = get_protocol(protocol)
    rng = np.random.default_rng(0)
    scripts = {"react": "Thought: add them\nAction: calculator\nAction Input: {\"expression\": \"37*91+5\"}",
               "internlm2": '<|action_start|><|plugin|>\n{"name": "calculator", "parameters": {"expression": "1+2"}}',
               "openai": '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2*3"}}\n</tool_call>'}
    kinds = []
    for required in (True, True, False, False, False):
        guide = guides.guide(GenerationConfig(structural_tag=proto.action_format(TOOLS, required=required)))
        script = scripts[protocol] if len(kinds) == 0 else ""
        text = tok.decode(_walk(guide, tok, rng, script), skip_special=True)
        parsed = proto.parse(_reply(proto, text))
        if required:
            assert isinstance(parsed, Act), text
        assert isinstance(parsed, (Act, Final)), text
        if isinstance(parsed, Act):
            for call in parsed.calls:
                assert call.error is None and call.name in SCHEMAS, text
                args = call.arguments
                if isinstance(args, str):  # ReAct: a one-text-parameter tool may take the text itself
                    (name,) = SCHEMAS[call.name]["properties"]
                    args = {name: args}
                jsonschema.validate(args, SCHEMAS[call.name])
        kinds.append(type(parsed).__name__)
    assert kinds[0] == "Act"


def test_agent_internlm2_interpreter_cell_parses():
    tok = smollm2_tokenizer()
    guides = Guides.for_tokenizer(tok, tok.vocab_size, tok.eos_ids)
    proto = get_protocol("internlm2")
    guide = guides.guide(GenerationConfig(structural_tag=proto.action_format(TOOLS[:1], required=True)))
    code = "print(37 * 91 + 5)"
    text = tok.decode(_walk(guide, tok, np.random.default_rng(1),
                            f"<|action_start|><|interpreter|>\n```python\n{code}\n```<|action_end|>"), skip_special=True)
    parsed = proto.parse(LLMReply(text))
    assert isinstance(parsed, Act) and parsed.calls[0].name == "python" and parsed.calls[0].arguments == {"code": code}


class MultiplyAdd(Tool):
    """a * b + c (integer arguments: a random model closes them quickly)."""

    name = "multiply_add"
    description = "Computes a * b + c."

    def run(self, a: Annotated[int, "a"], b: Annotated[int, "b"], c: Annotated[int, "c"]) -> str:
        return str(a * b + c)


@pytest.mark.parametrize("protocol", ["internlm2", "openai"])  # (ReAct's free Thought line: see the walks above)
def test_agent_local_llm_constrained_calls_a_tool(protocol):
    """A random model through LocalLLM (the engine, decoding under the protocol's grammar with
    require_tool) still makes a real, schema-valid tool call on its first turn, which runs."""
    from puyu_jax.generate import SamplingConfig
    from puyu_jax.models.params import init_model
    from puyu_jax.pretrained import Pretrained

    cfg = tiny_model_config().replace(max_position_embeddings=1024)
    llm = LocalLLM(pretrained=Pretrained(cfg, init_model(cfg, 0), smollm2_tokenizer(), "tiny"),
                   sampling=SamplingConfig(max_new_tokens=300, temperature=1.0, seed=3))
    tools = [MultiplyAdd()]
    state = run("What is 37 * 91 + 5?", llm, tools, protocol, max_turns=1, require_tool=True)
    action = [e for e in state.trajectory if e.kind == "action"]
    assert action and action[0].tool == "multiply_add", state.trajectory
    jsonschema.validate(action[0].args, tools[0].spec.json_schema())
    (obs,) = [e for e in state.trajectory if e.kind == "observation"]
    a = action[0].args
    assert obs.data["ok"] and obs.text == str(a["a"] * a["b"] + a["c"])
