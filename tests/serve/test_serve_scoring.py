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


def test_batched_scoring_through_the_scheduler_equals_the_dense_forward():
    """Many sequences scored as scheduled prefill work (shared contexts served by the prefix
    cache, prompts chunked by a small token budget, a pool that holds a few at once): every
    scored position equals one plain forward of that sequence alone (<= 1e-4)."""
    from puyu_jax.models.config import ModelConfig
    from puyu_jax.models.params import init_model
    from puyu_jax.serve.config import EngineConfig
    from puyu_jax.serve.engine import LLMEngine

    model = init_model(ModelConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=8,
                                   num_kv_heads=4, head_dim=16, max_position_embeddings=512), seed=3)
    vocab = model.cfg.vocab_size
    rng = np.random.default_rng(0)
    contexts = [list(rng.integers(1, vocab, n)) for n in (40, 7, 70)]
    seqs, froms = [], []
    for ctx in contexts:
        for k in (1, 3, 9):  # three continuations of each context
            seqs.append([int(t) for t in ctx + list(rng.integers(1, vocab, k))])
            froms.append(len(ctx) - 1)
    seqs.append([int(t) for t in rng.integers(1, vocab, 90)])
    froms.append(0)
    eng = LLMEngine(model, None, EngineConfig(block_size=8, num_blocks=40, max_num_seqs=6, max_num_batched_tokens=48))
    first = eng.score_batch(seqs[::3], froms[::3])  # the contexts enter the prefix cache
    rest = eng.score_batch([s for i, s in enumerate(seqs) if i % 3], [f for i, f in enumerate(froms) if i % 3])
    assert eng.stats().prefix_cache_hits > 0 and eng.stats().num_blocks_used == 0
    scores = [None] * len(seqs)
    scores[::3] = first
    scores[1::3], scores[2::3] = rest[0::2], rest[1::2]
    for ids, start, (lp, greedy) in zip(seqs, froms, scores):
        logits, _ = model(jax.numpy.asarray([ids], dtype=np.int32))
        dense = np.asarray(jax.nn.log_softmax(logits[0, :-1], axis=-1))
        want = dense[np.arange(len(ids) - 1), ids[1:]]
        np.testing.assert_allclose(lp[start + 1:], want[start:], atol=1e-4)
        np.testing.assert_array_equal(greedy[start + 1:], dense.argmax(-1)[start:] == np.asarray(ids[1:])[start:])
        assert np.isnan(lp[: start + 1]).all()
