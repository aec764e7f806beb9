"""The OpenAI-URL backend against a real OpenAI-compatible server (FastAPI + uvicorn, in-process)
over SmolLM2: PPL through /v1/completions echo + logprobs, generation and an LLM judge through chat."""

import pytest
from eval_helpers import reference_logprobs

from puyu_jax.eval import OpenAIBackend, evaluate, load_dataset, load_dataset_config, predict


def test_completions_logprobs_match_the_local_backend(openai_server, local_backend):
    url, _ = openai_server
    remote = OpenAIBackend(url, batch_size=3, concurrency=2)
    assert remote.model == "smollm2"  # the first served model
    requests = [("Question: What is 2 + 2?\nAnswer:", " 4"), ("The capital of France is", " Paris"),
                ("Hello", " world"), ("Water boils at", " 100 degrees")]
    got, want = remote.loglikelihood(requests), local_backend.loglikelihood(requests)
    for g, w in zip(got, want):
        assert g.tokens == w.tokens and g.greedy == w.greedy
        assert g.logprob == pytest.approx(w.logprob, abs=2e-3)


def test_ppl_dataset_over_the_url_equals_local(openai_server, local_backend):
    url, _ = openai_server
    cfg = load_dataset_config("arc-e", ["max_samples=4"])
    ds = load_dataset(cfg)
    remote = predict(OpenAIBackend(url, model="smollm2"), ds, progress=False)
    local = predict(local_backend, ds, progress=False)
    assert [p["prediction"] for p in remote] == [p["prediction"] for p in local]
    with pytest.raises(ValueError, match="text prompts"):
        predict(OpenAIBackend(url, model="smollm2"), ds, meta="chat", progress=False)


def test_generation_and_llm_judge_over_urls(openai_server):
    """MT-bench end to end: answers from the chat endpoint, grades from a judge behind the same URL."""
    url, app = openai_server
    cfg = load_dataset_config("mt_bench", ["max_samples=1", "inferencer.max_out_len=8",
                                           f"evaluator.judge.url={url}", "evaluator.judge.model=judge"])
    before = len(app.state.requests)
    res = evaluate(OpenAIBackend(url, model="smollm2"), cfg)
    reqs = app.state.requests[before:]
    answers = [b for kind, b in reqs if kind == "chat" and b["model"] == "smollm2"]
    judged = [b for kind, b in reqs if kind == "chat" and b["model"] == "judge"]
    assert len(answers) == 2 and len(judged) == 2  # two turns
    second_turn = [b for b in answers if len(b["messages"]) == 3]
    assert len(second_turn) == 1 and second_turn[0]["messages"][1]["role"] == "assistant"
    assert all(len(d["ratings"]) == 2 and set(d["ratings"]) <= {1.0, 10.0} for d in res["details"])
    first = judged[0]["messages"][1]["content"]
    assert "[Instruction]" in first or "<|The Start" in first
    assert 1.0 <= res["score"] <= 10.0 and res["metrics"]["failed"] == 0


def test_server_scores_are_plain_forward_passes(openai_server, smollm2):
    """The test server's echo logprobs are those of one forward pass (sanity of the stand-in)."""
    url, _ = openai_server
    tok = smollm2.tokenizer
    text = "The quick brown fox"
    resp = OpenAIBackend(url).client.completions.create(model="smollm2", prompt=text, max_tokens=0, echo=True,
                                                        logprobs=1)
    ids = tok.encode(text)
    logp = reference_logprobs(smollm2.model, ids)
    lp = resp.choices[0].logprobs
    assert "".join(lp.tokens) == text and lp.token_logprobs[0] is None
    assert lp.token_logprobs[1:] == pytest.approx([float(logp[i - 1, ids[i]]) for i in range(1, len(ids))], abs=1e-5)
