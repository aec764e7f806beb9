"""Constrained decoding through the OpenAI API with the real `openai` client: response_format
json_schema / json_object, tools with tool_choice required / named / auto, vLLM-style guided_* extras."""

import json

import jsonschema
import openai
import pytest
from serve_api_helpers import MODEL, served

USER = [{"role": "user", "content": "Describe a person as JSON."}]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "role": {"enum": ["admin", "user"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2}},
    "required": ["name", "age", "role"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"]}}}
CLOCK = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a timezone",
    "parameters": {"type": "object", "properties": {"tz": {"type": "integer", "minimum": -12, "maximum": 12}},
                   "required": ["tz"]}}}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, CLOCK)}


@pytest.fixture(scope="module")
def client():
    with served() as (url, _):
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


def test_guided_api_response_format_json_schema(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    replies = []
    for seed in (1, 2):
        r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=80, temperature=1.0, seed=seed,
                                           response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
        replies.append(r.choices[0].message.content)
    stream = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=80, temperature=1.0, seed=1,
                                            response_format=fmt, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == replies[0]
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=60, temperature=0.0,
                                       response_format={"type": "json_object"})
    c = r.choices[0]
    assert c.message.content.startswith("{")
    if c.finish_reason == "stop":
        assert isinstance(json.loads(c.message.content), dict)


def test_guided_api_tools_required_named_auto(client):
    msgs = [{"role": "user", "content": "What is the weather in Paris, and the time in Tokyo?"}]
    for seed in (3, 4):
        r = client.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER, CLOCK], tool_choice="required",
                                           max_tokens=80, temperature=1.0, seed=seed)
        call = r.choices[0].message.tool_calls[0].function
        assert r.choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])
    r = client.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER, CLOCK], max_tokens=80, seed=5,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}},
                                       temperature=1.0)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS["get_time"])
    for seed in range(6, 9):  # auto: free text, or a schema-valid call
        r = client.chat.completions.create(model=MODEL, messages=msgs, tools=[WEATHER, CLOCK], tool_choice="auto",
                                           max_tokens=40, temperature=1.0, seed=seed)
        for call in r.choices[0].message.tool_calls or []:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_guided_api_extras_and_errors(client):
    r = client.completions.create(model=MODEL, prompt="Pick a colour:", max_tokens=10, temperature=1.0, seed=1,
                                  n=4, extra_body={"guided_choice": ["red", "green", "blue"]})
    assert {c.text for c in r.choices} <= {"red", "green", "blue"}
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=12, temperature=1.0, seed=2,
                                       extra_body={"guided_regex": r"[A-Z][a-z]{2,5} [0-9]{2}"})
    text = r.choices[0].message.content
    assert text[0].isupper() and text[-2:].isdigit() and " " in text
    r = client.completions.create(model=MODEL, prompt="x", max_tokens=10, temperature=1.0, seed=3,
                                  extra_body={"guided_grammar": 'root ::= ("yes" | "no") "!"'})
    assert r.choices[0].text in ("yes!", "no!")
    r = client.completions.create(model=MODEL, prompt="x", max_tokens=60, temperature=1.0, seed=4,
                                  extra_body={"guided_json": PERSON})
    jsonschema.validate(json.loads(r.choices[0].text), PERSON)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=5, extra_body={"guided_regex": "(["})
    assert "regex" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=5,
                                  extra_body={"guided_regex": "a", "guided_choice": ["a"]})
    assert e.value.body["param"] == "guided_choice"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, tools=[WEATHER],
                                       tool_choice="required", extra_body={"guided_regex": "a"})
    assert e.value.body["param"] == "guided_regex"
