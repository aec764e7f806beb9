"""Parity with the outside reference: tiny random transformers models, fp32 logits.

Each model is built by transformers (torch, CPU), saved as a Hugging Face directory,
converted and loaded by puyu, then compared on random token ids with left padding;
the model is then exported back to HF and compared again.
"""

import numpy as np
import pytest
import torch
import transformers

from puyu_jax.models import from_flat, init_cache, to_flat
from puyu_jax.models.hf import load_hf_dir, save_hf_dir

TOL = 1e-4
D, L, H, V = 64, 2, 4, 256

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama-mha": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"num_key_value_heads": 4}),
    "llama-mqa-tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"num_key_value_heads": 1, "tie_word_embeddings": True}),
    "llama-mha-llama3-rope": (
        transformers.LlamaConfig,
        transformers.LlamaForCausalLM,
        {"num_key_value_heads": 4, "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                       "original_max_position_embeddings": 16}},
    ),
    "llama-linear-rope": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                          {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {}),
    "mistral-sliding": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": 5}),
}


def _hf_model(name: str):
    cfg_cls, model_cls, extra = FAMILIES[name]
    kw = dict(vocab_size=V, hidden_size=D, intermediate_size=96, num_hidden_layers=L, num_attention_heads=H,
              num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.15,
              tie_word_embeddings=False, attn_implementation="eager")
    kw.update(extra)
    torch.manual_seed(abs(hash(name)) % 1000)
    model = model_cls(cfg_cls(**kw)).eval()
    if name.startswith("qwen2"):  # give the q/k/v biases real values
        with torch.no_grad():
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    return model


def _batch(rng, b=3, t=20, pads=(0, 5, 11)):
    tokens = rng.integers(0, V, (b, t))
    mask = np.ones((b, t), np.int64)
    for i, p in enumerate(pads):
        mask[i, :p] = 0
    positions = np.clip(mask.cumsum(-1) - 1, 0, None)
    return tokens, mask, positions


def _hf_logits(model, tokens, mask, positions):
    with torch.no_grad():
        return model(torch.tensor(tokens), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions)).logits.float().numpy()


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_hf_logits_parity_and_export(name, tmp_path):
    hf = _hf_model(name)
    hf.save_pretrained(tmp_path / "hf")
    cfg, flat = load_hf_dir(tmp_path / "hf")
    model = from_flat(cfg, flat)

    rng = np.random.default_rng(0)
    tokens, mask, positions = _batch(rng)
    ref = _hf_logits(hf, tokens, mask, positions)
    valid = mask.astype(bool)
    assert ref[valid].std() > 0.1, "reference logits too flat for a meaningful comparison"

    # cache path: left-padded prefill, as generation runs it
    cache = init_cache(cfg, tokens.shape[0], 32, starts=(1 - mask).sum(-1))
    ours, _ = model(tokens, cache=cache)
    err = np.abs(np.asarray(ours) - ref)[valid].max()
    assert err <= TOL, f"{name}: prefill max |dlogits| {err:.2e}"

    # training path: explicit positions, padding as segment 0
    ours_train, _ = model(tokens, positions=positions, segment_ids=mask)
    err = np.abs(np.asarray(ours_train) - ref)[valid].max()
    assert err <= TOL, f"{name}: training forward max |dlogits| {err:.2e}"

    # export back to HF; transformers loads it and agrees
    save_hf_dir(cfg, {k: np.asarray(v) for k, v in to_flat(model).items()}, tmp_path / "out")
    back = type(hf).from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    err = np.abs(_hf_logits(back, tokens, mask, positions) - ref)[valid].max()
    assert err <= TOL, f"{name}: exported model max |dlogits| {err:.2e}"


def test_dynamic_ntk_rope_matches_transformers():
    """Dynamic NTK (InternLM2's long-context scaling) past the trained context."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from puyu_jax.models import ModelConfig, RopeConfig
    from puyu_jax.models.transformer import rope_inv_freq

    hf_cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=32,
                                      rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    rope = RopeConfig(theta=10000.0, scaling="dynamic", factor=2.0)
    for seq_len in (16, 32, 77, 400):
        ref, _ = ROPE_INIT_FUNCTIONS["dynamic"](hf_cfg, "cpu", seq_len=seq_len)
        ours = rope_inv_freq(rope, 16, 32, seq_len)
        np.testing.assert_allclose(np.asarray(ours), ref.numpy(), rtol=1e-6)
    cfg = ModelConfig(rope=rope)
    assert cfg.rope.scaling == "dynamic"


@pytest.mark.parametrize("family,source", [("internlm2", "llama"), ("internlm", "llama-mha")])
def test_internlm_layout_built_from_llama_gives_identical_logits(family, source, tmp_path):
    """A Llama checkpoint re-written in InternLM(2) layout (fused grouped wqkv for v2) loads to the same model."""
    from safetensors import safe_open

    hf = _hf_model(source)
    hf.save_pretrained(tmp_path / "llama")
    cfg, flat = load_hf_dir(tmp_path / "llama")
    save_hf_dir(cfg.replace(family=family), flat, tmp_path / family)
    with safe_open(str(tmp_path / family / "model.safetensors"), framework="numpy") as f:
        names = set(f.keys())
    fused = "model.layers.0.attention.wqkv.weight"
    assert (fused in names) == (family == "internlm2")

    cfg2, flat2 = load_hf_dir(tmp_path / family)
    assert cfg2.family == family
    tokens = np.random.default_rng(1).integers(0, V, (2, 16))
    ref, _ = from_flat(cfg, flat)(tokens)
    got, _ = from_flat(cfg2, flat2)(tokens)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    assert np.abs(np.asarray(ref) - _hf_logits(hf, tokens, np.ones_like(tokens), np.broadcast_to(np.arange(16), (2, 16)))).max() <= TOL
