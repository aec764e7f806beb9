"""The local backend on the serving engine (batched scoring through the scheduler, batched
generation) against plain forwards and the dense oracle, and the prediction cache."""

import pytest
from eval_helpers import reference_logprobs

from puyu_jax.eval import GoldBackend, PredictionCache, evaluate, load_dataset, load_dataset_config, predict


def _reference_score(pre, backend, prompt, continuation):
    """One unpadded forward pass of exactly this sequence (independent of the batching code)."""
    ctx = backend.render(prompt)
    ids, ctx_ids = backend.encode(ctx + continuation), backend.encode(ctx)
    n = next((i for i, (a, b) in enumerate(zip(ids, ctx_ids)) if a != b), min(len(ids), len(ctx_ids)))
    logp = reference_logprobs(pre.model, ids)
    lp = sum(logp[i - 1, ids[i]] for i in range(n, len(ids)))
    greedy = all(logp[i - 1].argmax() == ids[i] for i in range(n, len(ids)))
    return lp, len(ids) - n, greedy


def test_batched_scores_match_single_forward(smollm2, local_backend):
    chat = [{"role": "user", "content": "Which planet is known as the red planet?"}]
    requests = [("Question: What is 2 + 2?\nAnswer:", " 4"), ("The capital of France is", " Paris, the city of light"),
                ("Hello", " world"), (chat, "Mars"), ("A longer prompt " * 9 + "ends", " here."),
                ("Pick one.\nAnswer:", " A"), ("Pick one.\nAnswer:", " B"), ("Pick one.\nAnswer:", " C")]
    got = local_backend.loglikelihood(requests)
    for (p, c), s in zip(requests, got):
        lp, n, greedy = _reference_score(smollm2, local_backend, p, c)
        assert s.tokens == n
        assert s.logprob == pytest.approx(lp, abs=1e-4)
        assert s.greedy == greedy


def test_generate_respects_stops_and_length(local_backend):
    prompts = [[{"role": "user", "content": "List three colors, one per line."}], "Once upon a time"]
    texts = local_backend.generate(prompts, 12, stops=["\n"])
    assert len(texts) == 2 and all("\n" not in t for t in texts)
    assert all(len(local_backend.tokenizer.encode(t)) <= 13 for t in texts)
    assert texts == local_backend.generate(prompts, 12, stops=["\n"])  # greedy: deterministic
    from oracle import DenseGenerator

    from puyu_jax.eval.backends import truncate_at

    tok = local_backend.tokenizer
    ids = [local_backend.encode(local_backend.render(p)) for p in prompts]
    want = DenseGenerator(local_backend.model).generate(ids, 12, stop_ids=tok.eos_ids)
    assert texts == [truncate_at(tok.decode(w, skip_special=True), ["\n"]) for w in want]


class Interrupted(RuntimeError):
    pass


class CountingBackend:
    """Wraps a backend, counts requests and can fail after `fail_after` calls (an interrupted run)."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.calls, self.requests = inner, fail_after, 0, 0
        self.name = inner.name

    def loglikelihood(self, requests):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted("killed")
        self.calls += 1
        self.requests += len(requests)
        return self.inner.loglikelihood(requests)

    def generate(self, prompts, max_out_len, stops=()):
        self.calls += 1
        self.requests += len(prompts)
        return self.inner.generate(prompts, max_out_len, stops)


def test_interrupted_run_resumes_from_the_cache(tmp_path):
    cfg = load_dataset_config("hellaswag")
    ds = load_dataset(cfg)
    n_requests = sum(len(r["options"]) for r in ds.test)  # 120: two chunks of 64
    flaky = CountingBackend(GoldBackend(ds), fail_after=1)
    with pytest.raises(Interrupted):
        predict(flaky, ds, cache=PredictionCache(tmp_path, "a"))
    assert flaky.requests == 64
    again = CountingBackend(GoldBackend(ds))
    res = evaluate(again, cfg, cache=PredictionCache(tmp_path, "b"))
    assert again.requests == n_requests - 64 and res["score"] == 100.0
    third = CountingBackend(GoldBackend(ds))
    assert evaluate(third, cfg, cache=PredictionCache(tmp_path, "c")) == res  # deterministic, all cached
    assert third.requests == 0
    # a torn last line (a write cut short) is skipped, not fatal
    with open(tmp_path / "b.jsonl", "a") as f:
        f.write('{"k": "abc", "v": [0.0,')
    assert len(PredictionCache(tmp_path, "d").data) == n_requests


def test_cache_keys_depend_on_the_model(tmp_path):
    cfg = load_dataset_config("boolq", ["max_samples=4"])
    ds = load_dataset(cfg)
    cache = PredictionCache(tmp_path)
    a = CountingBackend(GoldBackend(ds))
    evaluate(a, cfg, cache=cache)
    b = CountingBackend(GoldBackend(ds))
    b.name = "another-model"
    evaluate(b, cfg, cache=cache)
    assert a.requests == b.requests == 8
