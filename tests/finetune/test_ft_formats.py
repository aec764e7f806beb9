"""Dataset formats -> one message schema; bad records are reported with their reason."""

import json

import pytest

from puyu_jax.assets import IDENTITY_SFT
from puyu_jax.finetune.formats import convert_record, detect_format, load_dataset

from conftest import DATA


@pytest.mark.parametrize("name, fmt, n", [
    (str(IDENTITY_SFT), "alpaca", 40), ("glaive_toolcall_en.json", "sharegpt", 24), ("v1_sft_demo.jsonl", "openai", 30),
    ("reason_tool_use.jsonl", "openai", 10), ("moss.jsonl", "moss", 4), ("oasst.jsonl", "oasst", 4),
])
def test_shipped_samples_load_without_errors(name, fmt, n):
    res = load_dataset(DATA / name)
    assert res.errors == [] and res.formats == {fmt: n} and len(res.samples) == n
    for s in res.samples:
        assert s.messages[-1]["role"] == "assistant" and any(m["train"] for m in s.messages)


def test_sharegpt_function_call_and_observation_become_tool_calls():
    s = load_dataset(DATA / "glaive_toolcall_en.json").samples[0]
    call = next(m for m in s.messages if m.get("tool_calls"))
    fn = call["tool_calls"][0]["function"]
    assert fn["name"] == "search_recipes" and json.loads(fn["arguments"]) == {"ingredients": ["chicken", "bell peppers", "rice"]}
    assert s.messages[s.messages.index(call) + 1]["role"] == "tool"
    assert s.tools[0]["name"] == "search_recipes"


def test_openai_parts_tool_calls_and_loss_weight():
    s = next(x for x in load_dataset(DATA / "reason_tool_use.jsonl").samples if any(m.get("tool_calls") for m in x.messages))
    call = next(m for m in s.messages if m.get("tool_calls"))
    assert call["content"].startswith("<think>\n") and call["train"]
    rec = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "loss_weight": 0.0},
                        {"role": "user", "content": "c"}, {"role": "assistant", "content": [{"type": "text", "text": "d"}]}]}
    msgs = convert_record(rec, "openai").messages
    assert [m["train"] for m in msgs] == [False, False, False, True] and msgs[3]["content"] == "d"


def test_moss_plugin_turns_and_oasst_text():
    s = load_dataset(DATA / "moss.jsonl").samples[1]
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert s.messages[2]["tool_calls"][0]["function"] == {"name": "Calculate", "arguments": '{"input": "1234*5678"}'}
    assert s.messages[3]["content"] == "7006652" and s.messages[4]["content"] == "1234 * 5678 = 7006652."
    o = load_dataset(DATA / "oasst.jsonl").samples[1]
    assert [m["role"] for m in o.messages] == ["user", "assistant", "user", "assistant"]
    assert o.messages[2]["content"] == "And on a high mountain?"


def test_plain_text_is_incremental_pretraining(tmp_path):
    (tmp_path / "c.txt").write_text("First document.\n\nSecond one.\n")
    res = load_dataset(tmp_path / "c.txt")
    assert [s.text for s in res.samples] == ["First document.", "Second one."] and res.formats == {"text": 2}
    assert detect_format({"text": "just prose"}) == "text"


def test_bad_records_are_counted_with_their_reason():
    res = load_dataset(DATA / "bad_records.jsonl")
    assert res.n_records == 9 and len(res.samples) == 1
    reasons = {e.index: e.reason for e in res.errors}
    assert "missing field 'output'" in reasons[1]
    assert "unknown 'from' 'robot'" in reasons[2]
    assert "function_call value is not JSON" in reasons[3]
    assert "last turn is 'user'" in reasons[4]
    assert "does not follow a tool call" in reasons[5]
    assert "empty '### Assistant:' turn" in reasons[6]
    assert "unknown record layout" in reasons[7]
    assert "not valid JSON" in reasons[8]
