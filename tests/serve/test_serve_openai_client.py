"""The real `openai` client (sync and async, streamed and not, tools) against a server on 127.0.0.1."""

import asyncio
import json

import openai
import pytest
from serve_api_helpers import MODEL, served

USER = [{"role": "user", "content": "What is the weather like in Paris?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def url():
    with served() as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_serve_client_chat_sync_stream_and_not(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    kw = dict(model=MODEL, messages=USER, max_tokens=6, seed=21, temperature=0.8)
    whole = client.chat.completions.create(**kw)
    text = whole.choices[0].message.content
    assert text and whole.usage.completion_tokens <= 6
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens
    comp = client.completions.create(model=MODEL, prompt="Paris is", max_tokens=4, seed=3)
    assert comp.choices[0].text and comp.usage.completion_tokens == 4 and comp.choices[0].finish_reason == "length"


def test_serve_client_errors_are_typed(client, url):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2, extra_body={"mirostat": 2})
    assert e.value.body["param"] == "mirostat"
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "assistant", "content": "hi"}], max_tokens=2)


def test_serve_client_async_stream_and_not(url):
    async def run():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        kw = dict(model=MODEL, messages=USER, max_tokens=5, seed=8, temperature=1.0)
        whole = await client.chat.completions.create(**kw)
        stream = await client.chat.completions.create(**kw, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        comp = await client.completions.create(model=MODEL, prompt="x", max_tokens=3, seed=1, stream=True)
        parts = [c.choices[0].text async for c in comp]
        await client.close()
        return whole.choices[0].message.content, text, parts

    whole, streamed, parts = asyncio.run(run())
    assert whole == streamed and len(parts) >= 1


def test_serve_client_tools_named_choice(client):
    """A named tool_choice forces that call; streamed deltas (name first, then argument pieces) add up to
    the non-streamed call. (A random model fills in the arguments, so only their agreement is checked.)"""
    kw = dict(model=MODEL, messages=USER, tools=[WEATHER], max_tokens=8, seed=5, temperature=0.7,
              tool_choice={"type": "function", "function": {"name": "get_weather"}}, parallel_tool_calls=False)
    whole = client.chat.completions.create(**kw)
    choice = whole.choices[0]
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert choice.finish_reason in ("tool_calls", "length")
    chunks = list(client.chat.completions.create(**kw, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function.name == "get_weather" and deltas[0].id.startswith("call_") and deltas[0].index == 0
    assert all(d.function.name is None and d.id is None for d in deltas[1:])
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason
    # the call goes back into the history and the conversation continues
    follow = client.chat.completions.create(model=MODEL, max_tokens=3, seed=1, tools=[WEATHER], messages=USER + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18})}])
    assert follow.choices[0].message.role == "assistant"


def test_serve_client_64_concurrent_streams_match_sequential(url, client):
    n = 64
    prompts = [f"Question number {i}: name a colour." for i in range(n)]

    async def concurrent():
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)

        async def one(i):
            stream = await aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompts[i]}], max_tokens=5, seed=1000 + i,
                temperature=1.0, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        out = await asyncio.gather(*[one(i) for i in range(n)])
        await aclient.close()
        return out

    together = asyncio.run(concurrent())
    alone = [client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompts[i]}],
                                            max_tokens=5, seed=1000 + i, temperature=1.0).choices[0].message.content
             for i in range(n)]
    assert all(together) and together == alone
    assert len(set(together)) > 1  # different seeds and prompts: not one answer copied around


@pytest.mark.slow
def test_serve_client_real_smollm2_answers():
    """The real SmolLM2-135M-Instruct behind the server answers a chat question correctly."""
    from puyu_jax.serve.async_engine import AsyncEngine
    from puyu_jax.serve.config import EngineConfig
    from puyu_jax.serve.engine import LLMEngine

    engine = AsyncEngine(LLMEngine.from_pretrained("smollm2", EngineConfig(num_blocks=64, max_num_seqs=4,
                                                                           max_model_len=1024)))
    engine.start()
    try:
        with served(engine, served_model_name="smollm2") as (url, _):
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
            answer = client.chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=24, temperature=0)
            assert "Paris" in answer.choices[0].message.content
            assert answer.choices[0].finish_reason in ("stop", "length")
    finally:
        engine.shutdown(drain_timeout_s=5)
