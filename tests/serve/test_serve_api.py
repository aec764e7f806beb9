"""The OpenAI-compatible endpoints over raw HTTP: shapes, sampling options, logprobs, stop, echo, metrics."""

import json

import httpx
import pytest
from serve_api_helpers import MODEL, served, smollm2_tokenizer

USER = [{"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture(scope="module")
def url():
    with served() as (url, _):
        yield url


def post(url, path, body, **kw):
    return httpx.post(url + path, json=body, timeout=120, **kw)


def sse_events(response) -> list:
    """The `data:` payloads of an event stream, `[DONE]` included."""
    events = []
    for block in response.text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            events.append("\n".join(data))
    return events


def test_serve_models_and_health(url):
    models = httpx.get(url + "/v1/models").json()
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [MODEL]
    assert models["data"][0]["max_model_len"] == 512
    assert httpx.get(url + f"/v1/models/{MODEL}").json()["id"] == MODEL
    assert httpx.get(url + "/v1/models/other").status_code == 404
    assert httpx.get(url + "/health").json() == {"status": "ready"}
    icon = httpx.get(url + "/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon" and icon.content[:4] == b"\0\0\1\0"


def test_serve_chat_completion_shape_and_limits(url):
    body = {"model": MODEL, "messages": USER, "max_completion_tokens": 5, "seed": 7, "user": "u1",
            "parallel_tool_calls": True}
    r = post(url, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == MODEL and out["id"].startswith("chatcmpl-")
    (choice,) = out["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("length", "stop")
    usage = out["usage"]
    prompt_ids = smollm2_tokenizer().encode(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nTell me about the sea.<|im_end|>\n<|im_start|>assistant\n")
    assert usage["prompt_tokens"] == len(prompt_ids)  # rendered with the model's own chat template
    assert usage["completion_tokens"] <= 5 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # the same seed gives the same answer; max_tokens is the older name of the same limit
    again = post(url, "/v1/chat/completions", {**body, "max_completion_tokens": None, "max_tokens": 5}).json()
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]


def test_serve_chat_n_choices_stream_and_usage(url):
    body = {"model": MODEL, "messages": USER, "max_tokens": 4, "seed": 3, "n": 2}
    whole = post(url, "/v1/chat/completions", body).json()
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    r = post(url, "/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text, finish, roles = {0: "", 1: ""}, {}, set()
    for c in chunks[:-1]:
        assert c["usage"] is None
        for ch in c["choices"]:
            roles.add(ch["delta"].get("role"))
            text[ch["index"]] += ch["delta"].get("content") or ""
            if ch["finish_reason"]:
                finish[ch["index"]] = ch["finish_reason"]
    assert "assistant" in roles and set(finish) == {0, 1}
    # seeded choices (seed + index) stream exactly what the non-streamed request returned
    assert [text[i] for i in (0, 1)] == [c["message"]["content"] for c in whole["choices"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_serve_stop_strings_cut_the_output(url):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 12, "seed": 11}
    full = post(url, "/v1/completions", body).json()["choices"][0]["text"]
    assert len(full) > 6
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = post(url, "/v1/completions", {**body, "stop": [stop, "never-there"]}).json()["choices"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full[:full.index(stop)] and stop not in cut["text"]
    cut_chat = post(url, "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 8, "seed": 5}).json()
    text = cut_chat["choices"][0]["message"]["content"]
    stopped = post(url, "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 8, "seed": 5,
                                                  "stop": text[2:5]}).json()["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["message"]["content"] == text[:text.index(text[2:5])]


def test_serve_completions_batch_ids_and_echo(url):
    tok = smollm2_tokenizer()
    ids = tok.encode("The sky is")
    body = {"model": MODEL, "prompt": ["The sky is", "A cat"], "max_tokens": 3, "n": 2, "seed": 2, "echo": True}
    out = post(url, "/v1/completions", body).json()
    assert out["object"] == "text_completion"
    choices = sorted(out["choices"], key=lambda c: c["index"])
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert all(c["text"].startswith("The sky is") for c in choices[:2])
    assert all(c["text"].startswith("A cat") for c in choices[2:])
    assert out["usage"]["prompt_tokens"] == len(ids) + len(tok.encode("A cat"))
    # the same prompt as token ids gives the same completions, streamed or not
    by_ids = post(url, "/v1/completions", {**body, "prompt": ids}).json()
    assert [c["text"] for c in by_ids["choices"]] == [c["text"] for c in choices[:2]]
    streamed = post(url, "/v1/completions", {**body, "prompt": [ids], "stream": True})
    events = sse_events(streamed)
    assert events[-1] == "[DONE]"
    text = {0: "", 1: ""}
    for e in events[:-1]:
        for c in json.loads(e)["choices"]:
            text[c["index"]] += c["text"]
    assert [text[0], text[1]] == [c["text"] for c in choices[:2]]
    mixed = post(url, "/v1/completions", {**body, "prompt": ["text", ids]})
    assert mixed.status_code == 400 and mixed.json()["error"]["param"].startswith("prompt")


def test_serve_logprobs(url):
    # with filtering and penalties on (they reshape sampling, not the reported model log-probabilities);
    # the same switches as the next test, so both run one compiled sampler
    shaping = {"top_k": 50, "presence_penalty": 0.5}
    body = {"model": MODEL, "messages": USER, "max_tokens": 3, "seed": 1, "logprobs": True, "top_logprobs": 3,
            **shaping}
    choice = post(url, "/v1/chat/completions", body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == 3 and "".join(t["token"] for t in content) == choice["message"]["content"]
    for t in content:
        assert t["logprob"] <= 0 and bytes(t["bytes"]).decode() == t["token"]
        tops = [x["logprob"] for x in t["top_logprobs"]]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True) and tops[0] >= t["logprob"] - 1e-5
    comp = post(url, "/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 3, "seed": 1,
                                          "logprobs": 2, **shaping}).json()["choices"][0]
    lp = comp["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 3
    assert "".join(lp["tokens"]) == comp["text"]
    assert lp["text_offset"] == [0, len(lp["tokens"][0]), len(lp["tokens"][0]) + len(lp["tokens"][1])]
    assert all(len(d) <= 2 for d in lp["top_logprobs"])


def test_serve_sampling_options_are_applied(url):
    base = {"model": MODEL, "prompt": "Colours: red, green,", "max_tokens": 8, "seed": 4, "logprobs": 1,
            "top_k": 50, "presence_penalty": 0.5}
    plain = post(url, "/v1/completions", base).json()["choices"][0]["text"]
    shaped = post(url, "/v1/completions", {**base, "top_k": 1, "top_p": 0.5, "min_p": 0.2, "temperature": 0.9,
                                           "presence_penalty": 1.5, "frequency_penalty": 1.0,
                                           "repetition_penalty": 1.3}).json()
    assert shaped["choices"][0]["text"] != plain  # top_k=1: one candidate per step, unlike plain sampling
    greedy_like = post(url, "/v1/completions", {**base, "top_k": 1, "temperature": 0.9, "seed": 99,
                                                "presence_penalty": 1.5, "frequency_penalty": 1.0,
                                                "repetition_penalty": 1.3, "top_p": 0.5, "min_p": 0.2}).json()
    assert greedy_like["choices"][0]["text"] == shaped["choices"][0]["text"]  # top_k=1 ignores the seed


def test_serve_json_object_response_format(url):
    """json_object is enforced while decoding: even a random model's reply is JSON (cut short here by
    max_tokens, so only its start is checked; tests/serve/test_serve_guided_api.py checks whole replies)."""
    for stream in (False, True):
        r = post(url, "/v1/chat/completions", {"model": MODEL, "messages": USER, "max_tokens": 3, "seed": 1,
                                               "stream": stream, "response_format": {"type": "json_object"}})
        assert r.status_code == 200
        if stream:
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or ""
                           for e in sse_events(r)[:-1] if json.loads(e)["choices"])
        else:
            text = r.json()["choices"][0]["message"]["content"]
        assert text.startswith("{")


def test_serve_metrics(url):
    post(url, "/v1/completions", {"model": MODEL, "prompt": "metrics", "max_tokens": 3, "seed": 1})
    post(url, "/v1/completions", {"model": "nope", "prompt": "metrics", "max_tokens": 3})
    text = httpx.get(url + "/metrics").text

    def value(name: str) -> float:
        line = next(ln for ln in text.splitlines() if ln.startswith(name + " ") or ln.startswith(name + "{"))
        return float(line.rsplit(" ", 1)[1])

    assert value('puyu_requests_total{endpoint="/v1/completions",status="200"}') >= 1
    assert value('puyu_requests_total{endpoint="/v1/completions",status="404"}') >= 1
    assert value("puyu_prompt_tokens_total") > 0 and value("puyu_generation_tokens_total") >= 3
    for h in ("puyu_time_to_first_token_seconds", "puyu_time_per_output_token_seconds",
              "puyu_e2e_request_latency_seconds"):
        assert value(h + "_count") >= 1
    for g in ("puyu_num_requests_running", "puyu_num_requests_waiting", "puyu_kv_cache_usage_ratio"):
        assert value(g) >= 0
