"""Test helpers for tests/eval: a small real OpenAI-compatible server over a puyu model
(FastAPI + uvicorn in a thread), and a rule-based stand-in for an MT-bench judge model."""

from __future__ import annotations

import re
import threading

import jax
import numpy as np
from fastapi import FastAPI, Request
from flax import nnx
from http_server import serving  # noqa: F401  (tests/http_server.py)


def standin_judge_reply(messages: list[dict]) -> str:
    """A stand-in for the judge *model* only (the grading code under test is the real one).

    It reads the assistant's (last) answer out of the MT-bench judge prompt and rates it
    [[10]] when it equals the reference answer (reference categories) or, without a
    reference, when it is a substantive answer (>= 20 characters); otherwise [[1]].
    """
    text = messages[-1]["content"]
    m = re.search(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", text, re.S)
    answer = m.group(1) if m else text.split("### Assistant A:\n")[-1].split("\n\n<|The End of Assistant A")[0]
    refs = re.findall(r"\[The Start of Reference Answer\]\n(.*?)\n\[The End of Reference Answer\]", text, re.S)
    refs += re.findall(r"### Reference answer:\n(.*?)\n\n(?:### User|<\|The End)", text, re.S)
    if refs:
        ok = answer.strip() == refs[-1].strip()
    else:
        ok = len(answer.strip()) >= 20
    return f"The answer is {'good' if ok else 'poor'}. Rating: [[{10 if ok else 1}]]"


class StandinJudge:
    """The stand-in judge as an in-process backend (`name` + `generate`)."""

    name = "standin-judge"

    def generate(self, prompts, max_out_len, stops=()):
        return [standin_judge_reply(p) for p in prompts]


_FORWARDS: dict = {}


def reference_logprobs(model, ids: list[int]) -> np.ndarray:
    """Next-token log-probs [len(ids), vocab] from one plain forward pass of this one sequence
    (batch 1, right-padded to a multiple of 64, which a causal model cannot see)."""
    if id(model) not in _FORWARDS:
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda st, tokens: jax.nn.log_softmax(nnx.merge(graphdef, st)(tokens)[0], axis=-1))
        _FORWARDS[id(model)] = (fn, state)
    fn, state = _FORWARDS[id(model)]
    padded = np.zeros((1, -(-len(ids) // 64) * 64), np.int32)
    padded[0, :len(ids)] = ids
    return np.asarray(fn(state, padded))[0, :len(ids)]


def make_app(model, tokenizer, name: str = "smollm2"):
    """An OpenAI-compatible app over a puyu model.

    /v1/completions scores prompts with one plain forward pass per prompt (no batching or
    padding: an independent check of the batched scorer) and returns `echo` + `logprobs`;
    /v1/chat/completions generates greedily with the dense oracle (`tests/oracle.py`); model "judge" answers with
    `standin_judge_reply`. Every request is counted in `app.state.requests`.
    """
    from puyu_jax.chat_templates import apply_chat_template
    from oracle import DenseGenerator

    app = FastAPI()
    app.state.requests = []
    gen = DenseGenerator(model, prompt_bucket=256, cache_bucket=512)
    lock = threading.Lock()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "puyu"}
                                           for m in (name, "judge")]}

    def score(text: str, top: int) -> dict:
        ids = tokenizer.encode(text)
        with lock:
            logp = reference_logprobs(model, ids)
        offsets = [len(tokenizer.decode(ids[:i])) for i in range(len(ids))]
        tokens = [tokenizer.decode(ids[:i + 1])[offsets[i]:] for i in range(len(ids))]
        token_lp = [None] + [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]
        tops = [None] + [{tokenizer.decode([int(np.argmax(logp[i - 1]))]): float(logp[i - 1].max())}
                         for i in range(1, len(ids))] if top else None
        return {"tokens": tokens, "token_logprobs": token_lp, "text_offset": offsets, "top_logprobs": tops}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        app.state.requests.append(("completions", body))
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        if body.get("max_tokens", 16) != 0 or not body.get("echo"):
            return {"error": {"message": "this test server only scores prompts (echo=true, max_tokens=0)"}}
        choices = [{"index": i, "text": p, "finish_reason": "length", "logprobs": score(p, body.get("logprobs") or 0)}
                   for i, p in enumerate(prompts)]
        return {"id": "cmpl-test", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": choices}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        app.state.requests.append(("chat", body))
        if body["model"] == "judge":
            text = standin_judge_reply(body["messages"])
        else:
            ids = apply_chat_template(tokenizer, body["messages"], add_generation_prompt=True, tokenize=True)
            with lock:
                out = gen.generate([ids], int(body.get("max_tokens") or 64), stop_ids=tokenizer.eos_ids)[0]
            text = tokenizer.decode([t for t in out if t not in tokenizer.eos_ids], skip_special=True)
            for s in body.get("stop") or []:
                text = text.split(s)[0]
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}

    return app
