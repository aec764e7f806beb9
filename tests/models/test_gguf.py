"""GGUF loading: synthetic files (quantization types, Q/K permutation, config) and the real SmolLM2."""

import math

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize

from puyu_jax.models.config import RopeConfig
from puyu_jax.models.gguf import find_smollm2_gguf, load_gguf, permute_qk, read_gguf_meta, unpermute_qk
from puyu_jax.models.hf import flat_to_hf, hf_to_flat

D, L, H, K, F, V, DH = 64, 2, 4, 2, 128, 96, 16
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
# max |error| / max |w| per type (round-to-nearest on the type's grid)
TOL = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 4e-3, Q.Q8_0: 1e-2, Q.Q5_0: 7e-2, Q.Q5_1: 4e-2, Q.Q4_0: 0.13, Q.Q4_1: 7e-2}


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """Verbatim logic of llama.cpp convert_hf_to_gguf.py LlamaModel.permute."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def random_hf(rng, *, bias: bool, tied: bool) -> dict[str, np.ndarray]:
    """HF-named llama/qwen2 state dict with [out, in] weights."""
    sd = {"model.embed_tokens.weight": rng.standard_normal((V, D)), "model.norm.weight": rng.standard_normal(D)}
    if not tied:
        sd["lm_head.weight"] = rng.standard_normal((V, D))
    for i in range(L):
        p = f"model.layers.{i}."
        sd |= {
            p + "input_layernorm.weight": rng.standard_normal(D),
            p + "post_attention_layernorm.weight": rng.standard_normal(D),
            p + "self_attn.q_proj.weight": rng.standard_normal((H * DH, D)),
            p + "self_attn.k_proj.weight": rng.standard_normal((K * DH, D)),
            p + "self_attn.v_proj.weight": rng.standard_normal((K * DH, D)),
            p + "self_attn.o_proj.weight": rng.standard_normal((D, H * DH)),
            p + "mlp.gate_proj.weight": rng.standard_normal((F, D)),
            p + "mlp.up_proj.weight": rng.standard_normal((F, D)),
            p + "mlp.down_proj.weight": rng.standard_normal((D, F)),
        }
        if bias:
            for n, rows in (("q", H * DH), ("k", K * DH), ("v", K * DH)):
                sd[p + f"self_attn.{n}_proj.bias"] = rng.standard_normal(rows)
    return {k: v.astype(np.float32) for k, v in sd.items()}


GGUF_OF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    if hf_name in GGUF_OF:
        return GGUF_OF[hf_name]
    _, _, i, rest = hf_name.split(".", 3)
    return f"blk.{i}.{GGUF_OF[rest]}"


def write_gguf(path, sd, *, arch="llama", qtype=Q.F32, theta=1e4, rope_freqs=None, extra_tensor=False):
    """Write sd as llama.cpp would: Q/K permuted (llama), 2-D weights in qtype, 1-D in F32."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(L)
    w.add_context_length(256)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(K)
    w.add_rope_dimension_count(DH)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(V)])
    w.add_bos_token_id(5)
    w.add_eos_token_id(6)
    w.add_chat_template(TEMPLATE)
    for name, x in sd.items():
        if arch == "llama" and ".q_proj." in name:
            x = llama_cpp_permute(x, H, H)
        elif arch == "llama" and ".k_proj." in name:
            x = llama_cpp_permute(x, H, K)
        t = qtype if x.ndim == 2 else Q.F32
        w.add_tensor(gguf_name(name), quantize(x, t), raw_dtype=t)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32), raw_dtype=Q.F32)
    if extra_tensor:
        w.add_tensor("blk.0.mystery.weight", np.zeros(4, np.float32), raw_dtype=Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quant_roundtrip(x: np.ndarray, t: Q) -> np.ndarray:
    return np.asarray(dequantize(quantize(x, t), t), np.float32).reshape(x.shape) if x.ndim == 2 else x


@pytest.mark.parametrize("qtype", list(TOL), ids=lambda t: t.name)
def test_quantized_llama(tmp_path, qtype):
    rng = np.random.default_rng(int(qtype))
    sd = random_hf(rng, bias=False, tied=False)
    write_gguf(tmp_path / "m.gguf", sd, qtype=qtype)
    cfg, flat, meta = load_gguf(tmp_path / "m.gguf")
    assert meta.tensor_types["blk.0.attn_q.weight"] == qtype.name
    assert meta.tensor_types["blk.0.attn_norm.weight"] == "F32"
    want = hf_to_flat(cfg, sd)
    assert set(flat) == set(want)
    # exactly what gguf's dequantize gives for the stored bytes (quantization is per row,
    # so quantizing the permuted rows equals permuting the quantized rows)
    exact = hf_to_flat(cfg, {k: quant_roundtrip(v, qtype) for k, v in sd.items()})
    for k in flat:
        assert flat[k].dtype == np.float32
        np.testing.assert_array_equal(flat[k], exact[k], err_msg=k)
        err = np.abs(flat[k] - want[k]).max() / np.abs(want[k]).max()
        assert err <= TOL[qtype], (k, err)
    # Q/K permutation undone: F32 reproduces the HF-order original exactly
    if qtype == Q.F32:
        assert all(np.array_equal(flat[k], want[k]) for k in flat)
        assert all(np.array_equal(v, sd[k]) for k, v in flat_to_hf(cfg, flat).items())


def test_config_and_meta(tmp_path):
    sd = random_hf(np.random.default_rng(0), bias=False, tied=True)
    write_gguf(tmp_path / "m.gguf", sd, theta=5e5)
    cfg, flat, meta = load_gguf(tmp_path / "m.gguf", dtype="bfloat16")
    assert (cfg.family, cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == ("llama", D, L, H, K)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.max_position_embeddings) == (F, V, 256)
    assert cfg.rope == RopeConfig(theta=5e5) and cfg.rms_norm_eps == 1e-5 and cfg.dim_per_head == DH
    assert cfg.tie_word_embeddings and "lm_head/kernel" not in flat
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.chat_template) == (5, 6, "chatml")
    assert cfg.param_dtype == "bfloat16" and flat["embed/embedding"].dtype.name == "bfloat16"
    assert meta.architecture == "llama" and meta.get("{arch}.block_count") == L
    assert meta.get("tokenizer.ggml.tokens") == [f"t{i}" for i in range(V)]
    assert meta.get("tokenizer.chat_template") == TEMPLATE and meta.get("tokenizer.ggml.model") == "gpt2"
    assert read_gguf_meta(tmp_path / "m.gguf").metadata == meta.metadata


def test_qwen2_bias_not_permuted(tmp_path):
    sd = random_hf(np.random.default_rng(1), bias=True, tied=False)
    write_gguf(tmp_path / "q.gguf", sd, arch="qwen2")
    cfg, flat, _ = load_gguf(tmp_path / "q.gguf")
    assert cfg.family == "qwen2" and cfg.qkv_bias and not cfg.o_bias
    back = flat_to_hf(cfg, flat)
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)


def test_permutation_helpers():
    x = np.random.default_rng(2).standard_normal((K * DH, 8)).astype(np.float32)
    np.testing.assert_array_equal(permute_qk(x, K), llama_cpp_permute(x, H, K))
    np.testing.assert_array_equal(unpermute_qk(permute_qk(x, K), K), x)
    b = np.arange(H * DH, dtype=np.float32)
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(b, H, H), H), b)


def llama_cpp_rope_factors(base, dim, factor, low, high, old):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.generate_extra_tensors (llama3)."""
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wl, high_wl = old / low, old / high
    out = []
    for freq in freqs:
        wl = 2 * math.pi / freq
        if wl < high_wl:
            out.append(1)
        elif wl > low_wl:
            out.append(factor)
        else:
            smooth = (old / wl - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def test_llama3_rope_freqs(tmp_path):
    sd = random_hf(np.random.default_rng(3), bias=False, tied=True)
    write_gguf(tmp_path / "l3.gguf", sd, theta=5e5, rope_freqs=llama_cpp_rope_factors(5e5, DH, 8.0, 1.0, 4.0, 8192))
    cfg, _, _ = load_gguf(tmp_path / "l3.gguf")
    assert cfg.rope == RopeConfig(theta=5e5, scaling="llama3", factor=8.0, original_max_position_embeddings=8192)
    write_gguf(tmp_path / "bad.gguf", sd, theta=5e5, rope_freqs=llama_cpp_rope_factors(5e5, DH, 8.0, 2.0, 3.0, 4096))
    with pytest.raises(ValueError, match="rope_freqs"):
        load_gguf(tmp_path / "bad.gguf")


def test_unknown_tensor(tmp_path):
    sd = random_hf(np.random.default_rng(4), bias=False, tied=True)
    write_gguf(tmp_path / "x.gguf", sd, extra_tensor=True)
    with pytest.raises(KeyError, match="blk.0.mystery.weight"):
        load_gguf(tmp_path / "x.gguf")


def test_find_smollm2(smollm2_gguf):
    assert smollm2_gguf == find_smollm2_gguf() and smollm2_gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smollm2_gguf.stat().st_size > 50_000_000


@pytest.fixture(scope="module")
def smollm2_transformers(smollm2_gguf):
    import torch as torch
    import transformers as transformers
    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32
    )


@pytest.mark.slow
def test_smollm2_matches_transformers(smollm2_gguf, smollm2_transformers):
    cfg, flat, meta = load_gguf(smollm2_gguf)
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (30, 576, 9, 3)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.rope.theta, cfg.tie_word_embeddings) == (1536, 49152, 1e5, True)
    assert meta.tensor_types["token_embd.weight"] == "Q8_0" and meta.tensor_types["blk.0.attn_q.weight"] == "Q4_1"
    assert cfg.chat_template == "chatml" and len(meta.get("tokenizer.ggml.tokens")) == 49152
    c = smollm2_transformers.config
    assert c.model_type == cfg.family
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert (c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (1536, 49152, cfg.max_position_embeddings)
    assert c.rope_parameters["rope_theta"] == cfg.rope.theta and c.rope_parameters["rope_type"] == "default"
    assert c.rms_norm_eps == pytest.approx(cfg.rms_norm_eps, rel=1e-6)
    assert c.tie_word_embeddings == cfg.tie_word_embeddings
    assert (c.bos_token_id, c.eos_token_id) == (cfg.bos_token_id, cfg.eos_token_id)

    sd = {k: v.detach().numpy() for k, v in smollm2_transformers.state_dict().items()}
    ours = flat_to_hf(cfg, flat)
    assert set(sd) == set(ours) | {"lm_head.weight"}
    np.testing.assert_array_equal(sd["lm_head.weight"], ours["model.embed_tokens.weight"])
    for k, v in ours.items():
        assert v.shape == sd[k].shape, k
        assert np.abs(v - sd[k]).max() <= 1e-6, k
