"""Chat templates: SmolLM2's own template against transformers, golden strings for the named templates."""

import json

import jinja2
import pytest

from puyu_jax.chat_templates import TEMPLATES, apply_chat_template, render_chat, stop_strings
from puyu_jax.tokenizer import load_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "user", "content": "书生·浦语是什么？"},
        {"role": "assistant", "content": "一个开源大模型 👋🏽"},
        {"role": "user", "content": "  Tell me more,\n\nplease.  "},
    ],
    [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ],
]

SYS_CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi, how can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]

GOLDEN = {
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi, how can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "internlm2": (
        "<s><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi, how can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
    "llama-2": (
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nHello! [/INST] Hi, how can I help? </s>"
        "<s>[INST] Tell me a joke. [/INST]"
    ),
    "llama-3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi, how can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "plain": (
        "system: You are a helpful assistant.\nuser: Hello!\nassistant: Hi, how can I help?\n"
        "user: Tell me a joke.\nassistant:"
    ),
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TOOL_CHAT = [
    {"role": "system", "content": "You are InternLM2-Chat."},
    {"role": "user", "content": "上海天气如何？"},
    {
        "role": "assistant",
        "content": "I will check.",
        "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "上海"}}}],
    },
    {"role": "tool", "content": '{"temperature": 22}'},
]
TOOL_GOLDEN = (
    "<s><|im_start|>system\nYou are InternLM2-Chat.<|im_end|>\n"
    "<|im_start|>system name=<|plugin|>\n"
    '[{"name": "get_weather", "description": "Current weather in a city", "parameters": {"type": "object", '
    '"properties": {"city": {"type": "string"}}, "required": ["city"]}}]<|im_end|>\n'
    "<|im_start|>user\n上海天气如何？<|im_end|>\n"
    "<|im_start|>assistant\nI will check.<|action_start|><|plugin|>\n"
    '{"name": "get_weather", "parameters": {"city": "上海"}}<|action_end|>\n<|im_end|>\n'
    "<|im_start|>environment name=<|plugin|>\n"
    '{"temperature": 22}<|im_end|>\n'
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def gguf_path(smollm2_gguf) -> str:
    return str(smollm2_gguf)


@pytest.fixture(scope="module")
def tok(gguf_path):
    return load_tokenizer(gguf_path)


@pytest.fixture(scope="module")
def hf_tok(smollm2_hf_tokenizer):
    return smollm2_hf_tokenizer


def _ids(x):
    return list(x["input_ids"]) if hasattr(x, "keys") else list(x)


@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_smollm2_template_matches_transformers(tok, hf_tok, conv, gen):
    messages = CONVERSATIONS[conv]
    ref = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
    ours = apply_chat_template(tok, messages, add_generation_prompt=gen)
    assert ours == ref
    assert ours == render_chat(tok.chat_template, messages, add_generation_prompt=gen)
    ref_ids = _ids(hf_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen))
    assert apply_chat_template(tok, messages, add_generation_prompt=gen, tokenize=True) == ref_ids
    assert tok.decode(ref_ids) == ref


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_named_templates_golden(name):
    assert render_chat(name, SYS_CHAT) == GOLDEN[name]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_named_templates_render_like_transformers(hf_tok, name):
    """Our template sources give the same text through transformers' own renderer."""
    assert hf_tok.apply_chat_template(SYS_CHAT, chat_template=TEMPLATES[name], tokenize=False,
                                      add_generation_prompt=True) == GOLDEN[name]
    ref = hf_tok.apply_chat_template(TOOL_CHAT, chat_template=TEMPLATES["internlm2"], tools=TOOLS,
                                     tokenize=False, add_generation_prompt=True)
    assert ref == TOOL_GOLDEN


def test_generation_prompt_off():
    assert render_chat("chatml", SYS_CHAT[:2], add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n"
    )
    assert render_chat("llama-3", SYS_CHAT[1:2], add_generation_prompt=False) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
    )


def test_internlm2_tools():
    assert render_chat("internlm2", TOOL_CHAT, tools=TOOLS) == TOOL_GOLDEN
    # bare function schemas, string arguments, no system message: the plugin turn comes first
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"function": {"name": "f", "arguments": '{"x": 1}'}}]},
        {"role": "environment", "content": "ok"},
    ]
    out = render_chat("internlm2", chat, tools=[{"name": "f", "parameters": {}}], add_generation_prompt=False)
    assert out == (
        "<s><|im_start|>system name=<|plugin|>\n"
        '[{"name": "f", "parameters": {}}]<|im_end|>\n'
        "<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n<|action_start|><|plugin|>\n"
        '{"name": "f", "parameters": {"x": 1}}<|action_end|>\n<|im_end|>\n'
        "<|im_start|>environment name=<|plugin|>\nok<|im_end|>\n"
    )
    json.loads(out.split("<|action_start|><|plugin|>\n")[1].split("<|action_end|>")[0])


def test_content_parts_and_jinja_extras():
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert render_chat("chatml", parts, add_generation_prompt=False) == "<|im_start|>user\nab<|im_end|>\n"
    src = (
        "{{ bos_token }}{{ messages | tojson }}"
        "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}x{% endfor %}"
    )
    out = render_chat(src, [{"role": "user", "content": "中"}, {"role": "user", "content": "y"}], bos_token="<s>")
    assert out == '<s>[{"role": "user", "content": "中"}, {"role": "user", "content": "y"}]x'
    assert len(render_chat("{{ strftime_now('%Y') }}", [])) == 4
    with pytest.raises(jinja2.exceptions.TemplateError, match="alternate"):
        render_chat("llama-2", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat("{{ messages.__class__.__mro__ }}", [])


def test_unknown_role():
    bad = [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]
    with pytest.raises(ValueError, match=r"message 1 .*'wizard'"):
        render_chat("chatml", bad)
    with pytest.raises(ValueError, match="message 1"):
        render_chat(TEMPLATES["chatml"], bad)
    with pytest.raises(ValueError, match="message 0"):
        render_chat("llama-2", [{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="message 0"):
        render_chat("chatml", [{"content": "no role"}])


def test_apply_named_template_tokenized(tok):
    ids = apply_chat_template(tok, SYS_CHAT, template="chatml", tokenize=True)
    assert tok.decode(ids) == GOLDEN["chatml"]
    assert ids[0] == tok.special_tokens["<|im_start|>"] and ids.count(tok.special_tokens["<|im_end|>"]) == 4


def test_apply_template_bos_not_doubled(tmp_path):
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>", "<|plugin|>"]
    hf = HFTok(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(["system user assistant hello world"] * 10, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True, "chat_template": TEMPLATES["internlm2"]}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    t = load_tokenizer(tmp_path)
    assert t.add_bos and t.eos_ids == (1, 3)  # </s> and the template's <|im_end|>
    ids = apply_chat_template(t, TOOL_CHAT, tools=TOOLS, tokenize=True)
    assert ids[:2] == [0, 2] and ids.count(0) == 1
    assert ids.count(4) == ids.count(5) == 1 and ids.count(6) == 3
    assert t.decode(ids) == TOOL_GOLDEN
    # without BOS in the text, the tokenizer's add_bos applies
    assert apply_chat_template(t, SYS_CHAT, template="chatml", tokenize=True)[:2] == [0, 2]


def test_no_template(tok):
    from puyu_jax.tokenizer import Tokenizer

    bare = Tokenizer(tok._backend)
    with pytest.raises(ValueError, match="chat_template"):
        apply_chat_template(bare, SYS_CHAT)


def test_stop_strings(tok):
    assert stop_strings("chatml") == ["<|im_end|>"]
    assert stop_strings("internlm2") == ["<|im_end|>", "<|action_end|>"]
    assert stop_strings("llama-3")[0] == "<|eot_id|>"
    assert stop_strings("llama-2") == ["</s>"]
    assert stop_strings(tok.chat_template) == ["<|im_end|>"]
    with pytest.raises(ValueError):
        stop_strings("nope")
