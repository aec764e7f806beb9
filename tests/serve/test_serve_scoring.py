"""Prompt scoring over HTTP (`echo` + `logprobs`, `max_tokens=0`): what PPL-style evaluation uses."""

import jax
import numpy as np
import openai
from flax import nnx
from serve_api_helpers import MODEL, served, shared_async_engine

from puyu_jax.eval.backends.openai import OpenAIBackend


def _dense_logprobs(engine, ids):
    model = nnx.merge(engine.runner.graphdef, engine.runner.state)
    logits, _ = model(jax.numpy.asarray([ids], dtype=np.int32))
    lp = np.asarray(jax.nn.log_softmax(logits[0, :-1], axis=-1))
    return lp[np.arange(len(ids) - 1), ids[1:]]


def test_echo_logprobs_score_the_prompt_as_the_model_does():
    engine = shared_async_engine().engine
    text = "The quick brown fox jumps over the lazy dog."
    ids = engine.tokenizer.encode(text)
    with served() as (url, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key="none")
        r = client.completions.create(model=MODEL, prompt=text, max_tokens=0, echo=True, logprobs=2)
        lp = r.choices[0].logprobs
        assert r.choices[0].text == text
        assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None
        np.testing.assert_allclose(lp.token_logprobs[1:], _dense_logprobs(engine, ids), atol=2e-4)
        assert "".join(lp.tokens) == text and lp.text_offset[1] == len(lp.tokens[0])
        assert all(len(t) == 2 for t in lp.top_logprobs[1:])
        # echo + generation: the prompt's entries come first, then the generated tokens'
        g = client.completions.create(model=MODEL, prompt=text, max_tokens=3, echo=True, logprobs=0, temperature=0)
        assert len(g.choices[0].logprobs.tokens) == len(ids) + 3

        # the eval harness's OpenAI backend scores continuations through it
        backend = OpenAIBackend(url, model=MODEL, concurrency=1)
        prompt, cont = "The quick brown fox", " jumps over the lazy dog."
        (score,) = backend.loglikelihood([(prompt, cont)])
        full = engine.tokenizer.encode(prompt + cont)
        n_prompt = len(engine.tokenizer.encode(prompt))
        want = _dense_logprobs(engine, full)[n_prompt - 1:]
        assert score.tokens == len(full) - n_prompt
        np.testing.assert_allclose(score.logprob, want.sum(), atol=1e-3)
