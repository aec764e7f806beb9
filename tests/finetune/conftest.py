"""Shared fixtures: the SmolLM2 tokenizer and a tiny random Hugging Face Llama using it."""

import pathlib

import pytest

DATA = pathlib.Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def smollm2_tok(smollm2_gguf):
    from puyu_jax.tokenizer import tokenizer_from_gguf

    return tokenizer_from_gguf(smollm2_gguf)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory, smollm2_tok):
    """A 2-layer random Llama (HF safetensors, fp32) with SmolLM2's tokenizer and chat template."""
    import torch
    import transformers

    d = tmp_path_factory.mktemp("tiny_llama")
    hc = transformers.LlamaConfig(vocab_size=smollm2_tok.vocab_size, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                  max_position_embeddings=512, tie_word_embeddings=True, rms_norm_eps=1e-5,
                                  bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(hc).save_pretrained(d)
    smollm2_tok.save(d)
    return d
