"""Constrained decoding in the engine: random JSON schemas sampled at temperature 1 all validate,
free rows are untouched by constrained neighbours, n > 1 / preemption / prefix cache keep working."""

import json

import jax.numpy as jnp
import jsonschema
import numpy as np
import pytest
from serve_api_helpers import smollm2_tokenizer, tiny_engine

from puyu_jax.serve.config import GenerationConfig
from puyu_jax.serve.guided import Guides, allocate_bitmask, allowed_ids, tool_call_tag
from puyu_jax.serve.sampling import SamplingArrays, SamplingFlags, apply_token_bitmask, sample


def random_schema(rng: np.random.Generator, depth: int = 0) -> dict:
    """A random JSON schema: nested objects, arrays, enums, bounded numbers, required fields.

    Strings, arrays and numbers are bounded so that a random model's output ends in a few dozen tokens.
    """
    kinds = ["string", "integer", "number", "boolean", "enum", "null", "pattern"]
    if depth < 2:
        kinds += ["object", "array", "object"]
    kind = kinds[rng.integers(len(kinds))]
    if kind == "string":
        lo = int(rng.integers(0, 3))
        return {"type": "string", "minLength": lo, "maxLength": lo + int(rng.integers(1, 6))}
    if kind == "pattern":
        return {"type": "string", "pattern": ["^[a-z]{2,4}$", "^[0-9]{3}-[A-Z]$", "^(yes|no)$"][rng.integers(3)]}
    if kind == "integer":
        lo = int(rng.integers(-100, 100))
        return {"type": "integer", "minimum": lo, "maximum": lo + int(rng.integers(0, 500))}
    if kind == "number":
        lo = float(rng.integers(-10, 10))
        return {"type": "number", "minimum": lo, "maximum": lo + float(rng.integers(1, 20))}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "null":
        return {"type": "null"}
    if kind == "enum":
        pool = ["red", "green", "blue", 1, 2.5, True, None, "x y"]
        return {"enum": [pool[i] for i in rng.choice(len(pool), int(rng.integers(1, 4)), replace=False)]}
    if kind == "array":
        lo = int(rng.integers(0, 2))
        return {"type": "array", "items": random_schema(rng, depth + 1), "minItems": lo,
                "maxItems": lo + int(rng.integers(1, 3))}
    names = ["id", "name", "score", "tags", "ok", "meta", "value"]
    props = {names[i]: random_schema(rng, depth + 1) for i in rng.choice(len(names), int(rng.integers(1, 4)),
                                                                         replace=False)}
    required = [k for k in props if rng.random() < 0.6]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


@pytest.fixture(scope="module")
def engine():
    return tiny_engine(max_num_seqs=64, num_blocks=512)


def test_guided_random_schemas_validate(engine):
    """60 random schemas x sampled decoding at temperature 1 on a random model: every reply
    parses and validates, and ends because the grammar is complete (not at the length limit)."""
    rng = np.random.default_rng(0)
    schemas = [{"type": "object", "properties": {"root": random_schema(rng)}, "required": ["root"]}
               for _ in range(60)]
    gens = [GenerationConfig(json_schema=s, temperature=1.0, seed=i, max_new_tokens=200) for i, s in enumerate(schemas)]
    prompts = [f"Reply in JSON, case {i}:" for i in range(len(schemas))]
    outs = engine.generate(prompts, gens)
    for schema, out in zip(schemas, outs):
        c = out.outputs[0]
        assert c.finish_reason == "stop" and c.token_ids[-1] in engine.eos_ids, (schema, c.text)
        jsonschema.validate(json.loads(c.text), schema)
    # each distinct schema compiled once: the same specs again hit the cache
    before = engine.guides.compiled
    engine.generate(prompts[:4], gens[:4])
    assert engine.guides.compiled == before


def test_guided_free_rows_unchanged_by_constrained_neighbours(engine):
    """Free requests (greedy and seeded sampling) give the same tokens with and without
    constrained requests in the same batches."""
    free = [GenerationConfig(max_new_tokens=12), GenerationConfig(max_new_tokens=12, temperature=1.0, seed=5),
            GenerationConfig(max_new_tokens=12, temperature=0.8, top_p=0.9, seed=6)]
    prompts = ["The weather today", "Once upon a time", "def main():"]
    alone = [o.outputs[0].token_ids for o in engine.generate(prompts, free)]
    guided = [GenerationConfig(json_schema={"type": "object", "properties": {"a": {"type": "integer"}}},
                               max_new_tokens=12, temperature=1.0, seed=1),
              GenerationConfig(choice=("alpha", "beta"), max_new_tokens=12),
              GenerationConfig(regex=r"[0-9]{12}", max_new_tokens=12)]
    mixed = engine.generate(prompts + ["a", "b", "c"], free + guided)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == alone
    assert mixed[4].outputs[0].text in ("alpha", "beta")
    assert len(mixed[5].outputs[0].text) == 12 and mixed[5].outputs[0].text.isdigit()


def test_guided_n_preemption_and_prefix_cache():
    """n > 1 forks the matcher; a pool small enough to preempt and recompute sequences, and a
    prompt served from the prefix cache, still give valid replies."""
    eng = tiny_engine(num_blocks=12, block_size=8, max_num_seqs=8)
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 9},
                                               "s": {"type": "string", "maxLength": 4}},
              "required": ["city", "n", "s"]}
    prompt = "List one city as JSON " * 3
    gens = [GenerationConfig(json_schema=schema, temperature=1.0, seed=i, n=3, max_new_tokens=40) for i in range(3)]
    outs = eng.generate([prompt] * 3, gens)
    assert eng.stats().num_preemptions > 0 and eng.stats().prefix_cache_hits > 0
    texts = [c.text for o in outs for c in o.outputs]
    assert len(texts) == 9
    for t in texts:
        jsonschema.validate(json.loads(t), schema)
    assert len(set(texts)) > 1  # the choices were sampled independently


def test_guided_mask_in_step_greedy_and_sampled():
    """The mask applies before greedy and sampled choice alike; out-of-vocabulary padding stays masked."""
    v = 70
    logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, v)), jnp.float32)
    bitmask = allocate_bitmask(2, v)
    bitmask[0] = 0
    bitmask[0, 1] = 1 << 3  # only token 35
    masked = np.asarray(apply_token_bitmask(logits, jnp.asarray(bitmask)))
    assert np.isinf(masked[0]).sum() == v - 1 and masked[0, 35] == logits[0, 35]
    assert np.array_equal(masked[1], np.asarray(logits[1]))
    assert list(allowed_ids(bitmask[0], v)) == [35]
    b = 2
    s = SamplingArrays(temperature=jnp.array([0.0, 1.0]), top_k=jnp.zeros(b, jnp.int32), top_p=jnp.ones(b),
                       min_p=jnp.zeros(b), repetition_penalty=jnp.ones(b), presence_penalty=jnp.zeros(b),
                       frequency_penalty=jnp.zeros(b), key_data=jnp.zeros((b, 2), jnp.uint32),
                       step=jnp.zeros(b, jnp.int32), history=-jnp.ones((b, 1), jnp.int32),
                       history_is_output=jnp.zeros((b, 1), bool))
    bitmask[1] = 0
    bitmask[1, 0] = 1 << 7  # only token 7 for the sampled row
    out = sample(logits, s, SamplingFlags(sample=True), jnp.asarray(bitmask))
    assert list(np.asarray(out["tokens"])) == [35, 7]


def test_guided_specs_and_errors(engine):
    with pytest.raises(ValueError, match="only one constraint"):
        GenerationConfig(regex="a+", choice=("a",))
    with pytest.raises(ValueError, match="json_schema is not valid JSON"):
        GenerationConfig(json_schema="{nope")
    with pytest.raises(ValueError, match="^regex: cannot compile"):
        engine.add_request(None, "x", GenerationConfig(regex="(["))
    with pytest.raises(ValueError, match="^json_schema: cannot compile"):
        engine.add_request(None, "x", GenerationConfig(json_schema={"type": "objectx"}))
    out = engine.generate(["Say:"], GenerationConfig(grammar='root ::= "<" [a-c]{2,3} ">"', temperature=1.0,
                                                     max_new_tokens=20))[0].outputs[0]
    assert out.text[0] == "<" and out.text[-1] == ">" and set(out.text[1:-1]) <= set("abc")
    # json_object: compact JSON object (truncated by the limit at worst, never other text)
    out = engine.generate(["{"], GenerationConfig(json_object=True, max_new_tokens=20))[0].outputs[0]
    assert out.text.startswith("{")


def test_guided_tool_call_tag_required_and_auto():
    """Tool-call structural tags: `required` forces one schema-valid call, `auto` allows text or calls."""
    tok = smollm2_tokenizer()
    guides = Guides.for_tokenizer(tok, tok.vocab_size, tok.eos_ids)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 6}}, "required": ["city"]}
    calls = [('<tool_call>\n{"name": "weather", "arguments": ', schema, "}\n</tool_call>")]
    rng = np.random.default_rng(1)
    for required in (True, False):
        guide = guides.guide(GenerationConfig(structural_tag=tool_call_tag(calls, trigger="<tool_call>",
                                                                           required=required)))
        mask = allocate_bitmask(1, tok.vocab_size)
        out = []
        # walk the grammar, preferring the trigger's tokens so that the call is taken
        target = tok.encode('<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
        while not guide.terminated and len(out) < 60:
            guide.fill(mask, 0)
            ok = set(allowed_ids(mask[0], tok.vocab_size).tolist())
            want = target[len(out)] if len(out) < len(target) else None
            t = want if want in ok else (min(ok & set(tok.eos_ids)) if ok & set(tok.eos_ids) else
                                         int(rng.choice(sorted(ok))))
            assert guide.accept(t)
            out.append(t)
        assert tok.decode(out, skip_special=True) == tok.decode(target)
        if not required:  # free text is allowed too
            guide = guides.guide(GenerationConfig(structural_tag=tool_call_tag(calls, trigger="<tool_call>")))
            assert all(guide.accept(t) for t in tok.encode("Sunny, 20 degrees."))
        else:  # a call is required: the reply cannot end before it
            guide = guides.guide(GenerationConfig(structural_tag=tool_call_tag(calls, trigger="<tool_call>",
                                                                               required=True)))
            guide.fill(mask, 0)
            assert not set(allowed_ids(mask[0], tok.vocab_size).tolist()) & set(tok.eos_ids)


def test_guided_pipeline(engine):
    """The pipeline takes the constraint as a GenerationConfig or as keywords."""
    from puyu_jax.serve.pipeline import Pipeline

    pipe = Pipeline(engine)
    r = pipe("Pick a colour:", GenerationConfig(choice=["red", "blue"], temperature=1.0, seed=0, n=3))
    assert {c.text for c in r.choices} <= {"red", "blue"}
    for r in pipe(["a", "b"], max_new_tokens=8, regex="[0-9]{3}"):
        assert len(r.text) == 3 and r.text.isdigit() and r.finish_reason == "stop"
    point = {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
             "required": ["x", "y"], "additionalProperties": False}
    r = pipe("A point:", json_schema=point, max_new_tokens=40, temperature=1.0, seed=2)
    jsonschema.validate(json.loads(r.text), point)
