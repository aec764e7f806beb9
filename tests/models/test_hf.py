"""HF checkpoints <-> flat dict: configs, layouts, directories (tiny random transformers models)."""

import json

import numpy as np
import pytest

from puyu_jax.models.config import ModelConfig, RopeConfig
from puyu_jax.models.hf import (
    config_from_hf,
    config_to_hf,
    flat_shapes,
    flat_to_hf,
    hf_to_flat,
    load_hf_dir,
    merge_wqkv,
    safetensors_files,
    save_hf_dir,
    split_wqkv,
)

import torch  # noqa: E402
import transformers  # noqa: E402

D, L, H, K, V, F = 64, 2, 4, 2, 256, 128
COMMON = dict(
    hidden_size=D,
    num_hidden_layers=L,
    num_attention_heads=H,
    num_key_value_heads=K,
    vocab_size=V,
    intermediate_size=F,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)
LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
VARIANTS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama_tied": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True}),
    "llama_llama3_bias": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": LLAMA3, "attention_bias": True}),
    "llama_bf16": ("LlamaConfig", "LlamaForCausalLM", {"head_dim": 32}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}),
    "qwen2_tied": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 32}),
}


def _state_dict_np(model) -> dict[str, np.ndarray]:
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach()
        out[k] = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    return out


_BUILT: dict = {}


def _build(name: str, tmp_path_factory):
    """(variant, dir, transformers model): a tiny random model saved with save_pretrained (cached)."""
    if name not in _BUILT:
        cfg_cls, model_cls, extra = VARIANTS[name]
        torch.manual_seed(0)
        hf_cfg = getattr(transformers, cfg_cls)(**COMMON, **extra)
        model = getattr(transformers, model_cls)(hf_cfg).eval()
        with torch.no_grad():  # make norms/biases non-trivial so mix-ups show
            for n, p in model.named_parameters():
                if "norm" in n or n.endswith("bias"):
                    p.copy_(torch.randn_like(p))
        if name == "llama_bf16":
            model = model.to(torch.bfloat16)
        path = tmp_path_factory.mktemp(name)
        model.save_pretrained(path, max_shard_size="40KB" if name == "llama" else "5GB")
        _BUILT[name] = (name, path, model)
    return _BUILT[name]


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def hf_ckpt(request, tmp_path_factory):
    return _build(request.param, tmp_path_factory)


def test_load_config_and_shapes(hf_ckpt):
    name, path, model = hf_ckpt
    if name == "llama":
        assert len(safetensors_files(path)) > 1 and (path / "model.safetensors.index.json").exists()
    cfg, flat = load_hf_dir(path)
    c = model.config
    assert cfg.family == c.model_type
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads) == (D, L, H, K)
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.max_position_embeddings) == (V, F, 256)
    assert cfg.rms_norm_eps == pytest.approx(1e-5)
    assert cfg.dim_per_head == getattr(c, "head_dim", D // H)
    assert cfg.tie_word_embeddings == c.tie_word_embeddings
    assert cfg.rope.theta == c.rope_parameters["rope_theta"]
    assert cfg.qkv_bias == (name in ("qwen2", "qwen2_tied", "llama_llama3_bias"))
    assert cfg.o_bias == (name == "llama_llama3_bias")
    assert cfg.sliding_window == (32 if name == "mistral" else 0)
    if name == "llama_llama3_bias":
        assert cfg.rope == RopeConfig(500000.0, "llama3", 8.0, 1.0, 4.0, 64)
    else:
        assert cfg.rope.scaling == "none"
    want_dtype = "bfloat16" if name == "llama_bf16" else "float32"
    assert cfg.param_dtype == want_dtype and flat["embed/embedding"].dtype.name == want_dtype

    dh = cfg.dim_per_head
    shapes = {k: v.shape for k, v in flat.items()}
    assert shapes == flat_shapes(cfg)
    assert shapes["layers/1/attn/q_proj/kernel"] == (D, H, dh)
    assert shapes["layers/1/attn/k_proj/kernel"] == (D, K, dh)
    assert shapes["layers/1/attn/o_proj/kernel"] == (H, dh, D)
    assert shapes["layers/1/mlp/down_proj/kernel"] == (F, D)
    assert ("lm_head/kernel" in flat) == (not cfg.tie_word_embeddings)

    # Pin the layout: kernels are HF weights transposed, heads split off the output dim.
    sd = _state_dict_np(model)
    f32 = {k: np.asarray(v, np.float32) for k, v in flat.items()}
    wq = sd["model.layers.1.self_attn.q_proj.weight"]
    for h in range(H):
        np.testing.assert_array_equal(f32["layers/1/attn/q_proj/kernel"][:, h, :], wq[h * dh : (h + 1) * dh].T)
    wo = sd["model.layers.1.self_attn.o_proj.weight"]
    np.testing.assert_array_equal(f32["layers/1/attn/o_proj/kernel"].reshape(H * dh, D), wo.T)
    np.testing.assert_array_equal(f32["layers/0/mlp/gate_proj/kernel"], sd["model.layers.0.mlp.gate_proj.weight"].T)
    np.testing.assert_array_equal(f32["final_norm/scale"], sd["model.norm.weight"])
    if cfg.qkv_bias:
        np.testing.assert_array_equal(
            f32["layers/0/attn/k_proj/bias"].reshape(-1), sd["model.layers.0.self_attn.k_proj.bias"]
        )
    if not cfg.tie_word_embeddings:
        np.testing.assert_array_equal(f32["lm_head/kernel"], sd["lm_head.weight"].T)


def test_flat_hf_round_trip_bit_exact(hf_ckpt):
    _, path, _ = hf_ckpt
    from safetensors.numpy import load_file

    raw = {}
    for f in safetensors_files(path):
        raw |= load_file(f)
    cfg, flat = load_hf_dir(path)
    back = flat_to_hf(cfg, hf_to_flat(cfg, raw))
    assert set(back) == set(raw)
    for k, v in raw.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert back[k].tobytes() == v.tobytes(), k


def test_save_hf_dir_loads_in_transformers(hf_ckpt, tmp_path):
    name, path, model = hf_ckpt
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "<|im_start|>{{ x }}"}))
    cfg, flat = load_hf_dir(path)
    assert cfg.chat_template == "chatml"
    out = save_hf_dir(cfg, flat, tmp_path / "out", tokenizer_dir=path, max_shard_bytes=30_000)
    assert (out / "model.safetensors.index.json").exists() and (out / "tokenizer_config.json").exists()
    # the source's generation_config.json (copied with the tokenizer) wins over the generated one
    assert (out / "generation_config.json").read_text() == (path / "generation_config.json").read_text()
    dtype = torch.bfloat16 if name == "llama_bf16" else torch.float32
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=dtype)
    assert type(loaded) is type(model)
    want, got = model.state_dict(), loaded.state_dict()
    assert set(want) == set(got)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    keys = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "vocab_size",
            "intermediate_size", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "head_dim",
            "rope_parameters", "sliding_window", "attention_bias", "hidden_act", "layer_types"]  # fmt: skip
    a, b = model.config.to_dict(), loaded.config.to_dict()
    for k in keys:
        assert a.get(k) == b.get(k), k
    # and our own reading of the exported dir is unchanged
    cfg2, flat2 = load_hf_dir(out)
    assert cfg2 == cfg
    assert all(np.array_equal(flat[k], flat2[k]) for k in flat)


def test_save_hf_dir_dtype_cast(tmp_path, tmp_path_factory):
    _, path, _ = _build("llama", tmp_path_factory)
    cfg, flat = load_hf_dir(path, dtype="bfloat16")
    assert cfg.param_dtype == "bfloat16" and flat["embed/embedding"].dtype.name == "bfloat16"
    save_hf_dir(cfg, flat, tmp_path, dtype="float32")
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == cfg.eos_token_id
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float32"
    cfg2, flat2 = load_hf_dir(tmp_path)
    assert flat2["embed/embedding"].dtype == np.float32
    np.testing.assert_array_equal(flat2["embed/embedding"], flat["embed/embedding"].astype(np.float32))


@pytest.mark.parametrize("name", ["llama", "llama_llama3_bias"])
def test_internlm_layouts_from_llama(name, tmp_path_factory):
    _, path, model = _build(name, tmp_path_factory)
    cfg, flat = load_hf_dir(path)
    if cfg.rope.scaling == "llama3":
        cfg = cfg.replace(rope=RopeConfig(theta=cfg.rope.theta))
    for fam in ("internlm2",) + (("internlm",) if cfg.num_heads == cfg.num_kv_heads else ()):
        c2 = cfg.replace(family=fam)
        hf = flat_to_hf(c2, flat)
        assert "model.layers.0.attention.wqkv.weight" in hf and "model.tok_embeddings.weight" in hf
        assert ("model.layers.0.attention.wqkv.bias" in hf) == cfg.qkv_bias
        assert ("output.weight" in hf) == (not cfg.tie_word_embeddings)
        back = hf_to_flat(c2, hf)
        assert set(back) == set(flat)
        for k in flat:
            assert back[k].dtype == flat[k].dtype and np.array_equal(back[k], flat[k]), k
        q, k_, v = split_wqkv(hf["model.layers.1.attention.wqkv.weight"], c2)
        sd = _state_dict_np(model)
        np.testing.assert_array_equal(q, sd["model.layers.1.self_attn.q_proj.weight"])
        np.testing.assert_array_equal(k_, sd["model.layers.1.self_attn.k_proj.weight"])
        np.testing.assert_array_equal(v, sd["model.layers.1.self_attn.v_proj.weight"])
        np.testing.assert_array_equal(hf["model.layers.0.feed_forward.w3.weight"], sd["model.layers.0.mlp.up_proj.weight"])
    c1 = cfg.replace(family="internlm", num_kv_heads=cfg.num_heads)  # MHA-only family
    flat1 = {k: v for k, v in flat.items()}
    for i in range(cfg.num_layers):
        for p in ("k_proj", "v_proj"):
            flat1[f"layers/{i}/attn/{p}/kernel"] = np.repeat(flat[f"layers/{i}/attn/{p}/kernel"], H // K, axis=1)
            if cfg.qkv_bias:
                flat1[f"layers/{i}/attn/{p}/bias"] = np.repeat(flat[f"layers/{i}/attn/{p}/bias"], H // K, axis=0)
    hf1 = flat_to_hf(c1, flat1)
    assert ("model.layers.0.self_attn.o_proj.bias" in hf1) == cfg.o_bias
    back1 = hf_to_flat(c1, hf1)
    assert all(np.array_equal(back1[k], flat1[k]) for k in flat1)


@pytest.mark.parametrize("kv", [8, 4, 2])
def test_wqkv_split_merge(kv):
    cfg = ModelConfig(family="internlm2", hidden_size=48, num_heads=8, num_kv_heads=kv, head_dim=6)
    rng = np.random.default_rng(kv)
    g, dh = 8 // kv, 6
    grouped = rng.standard_normal((kv, g + 2, dh, 48)).astype(np.float32)
    w = grouped.reshape(-1, 48)
    q, k, v = split_wqkv(w, cfg)
    assert q.shape == (8 * dh, 48) and k.shape == v.shape == (kv * dh, 48)
    # query head j belongs to kv group j // g
    for j in range(8):
        np.testing.assert_array_equal(q[j * dh : (j + 1) * dh], grouped[j // g, j % g])
    np.testing.assert_array_equal(k.reshape(kv, dh, 48), grouped[:, g])
    np.testing.assert_array_equal(v.reshape(kv, dh, 48), grouped[:, g + 1])
    np.testing.assert_array_equal(merge_wqkv(q, k, v, cfg), w)
    b = rng.standard_normal(((8 + 2 * kv) * dh,)).astype(np.float32)
    np.testing.assert_array_equal(merge_wqkv(*split_wqkv(b, cfg), cfg), b)
    with pytest.raises(ValueError):
        split_wqkv(w[:-1], cfg)


def test_name_errors():
    cfg = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=2)
    flat = {k: np.zeros(s, np.float32) for k, s in flat_shapes(cfg).items()}
    hf = flat_to_hf(cfg, flat)
    hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.zeros(4, np.float32)  # ignored
    assert set(hf_to_flat(cfg, hf)) == set(flat)
    bad = dict(hf, **{"model.layers.7.mlp.extra.weight": np.zeros(1)})
    del bad["model.norm.weight"]
    with pytest.raises(KeyError, match=r"(?s)missing \(1\): model\.norm\.weight.*unknown \(1\): model\.layers\.7"):
        hf_to_flat(cfg, bad)
    with pytest.raises(KeyError, match="lm_head/kernel"):
        flat_to_hf(cfg, {k: v for k, v in flat.items() if k != "lm_head/kernel"})
    with pytest.raises(ValueError, match="shape"):
        flat_to_hf(cfg, dict(flat, **{"final_norm/scale": np.zeros(3, np.float32)}))


ROUND_TRIP_CFGS = [
    ModelConfig(family="llama", rope=RopeConfig(theta=5e5, scaling="llama3", factor=8.0, original_max_position_embeddings=8192)),
    ModelConfig(family="llama", rope=RopeConfig(scaling="linear", factor=2.0), qkv_bias=True, o_bias=True),
    ModelConfig(family="llama", rope=RopeConfig(scaling="dynamic", factor=2.0), head_dim=256, tie_word_embeddings=True),
    ModelConfig(family="qwen2", qkv_bias=True, num_kv_heads=4, sliding_window=4096, eos_token_id=151645),
    ModelConfig(family="qwen2", qkv_bias=True, num_kv_heads=4, dtype="bfloat16", param_dtype="bfloat16"),
    ModelConfig(family="mistral", num_kv_heads=8, sliding_window=4096),
    ModelConfig(family="mistral", num_kv_heads=8),
    ModelConfig(family="internlm", qkv_bias=True, o_bias=True, rope=RopeConfig(scaling="dynamic", factor=1.0)),
    ModelConfig(family="internlm", qkv_bias=True, o_bias=True),
    ModelConfig(family="internlm2", num_kv_heads=8, rope=RopeConfig(theta=1e6, scaling="dynamic", factor=2.0)),
    ModelConfig(family="internlm2", num_kv_heads=8, rope=RopeConfig(scaling="linear", factor=3.0), qkv_bias=True, o_bias=True),
]  # fmt: skip


@pytest.mark.parametrize("cfg", ROUND_TRIP_CFGS, ids=lambda c: c.family)
def test_config_round_trip(cfg):
    hf = json.loads(json.dumps(config_to_hf(cfg)))
    assert config_from_hf(hf) == cfg
    if cfg.family in ("internlm", "internlm2"):
        assert hf["architectures"][0].startswith("InternLM") and "AutoModelForCausalLM" in hf["auto_map"]
    else:  # transformers accepts it and reads the same values
        c = transformers.AutoConfig.for_model(**hf)
        assert c.rope_parameters == hf["rope_parameters"]
        assert getattr(c, "head_dim", None) in (None, cfg.dim_per_head)
        assert (getattr(c, "sliding_window", None) or 0) == cfg.sliding_window


def test_config_from_hf_formats():
    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=99)
    old = config_from_hf(dict(base, model_type="llama", rope_theta=1e4, rope_scaling={"type": "linear", "factor": 4}))
    assert old.rope == RopeConfig(theta=1e4, scaling="linear", factor=4.0) and old.num_kv_heads == 4
    l3 = config_from_hf(dict(base, model_type="llama", rope_theta=5e5, eos_token_id=[7, 8],
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}))  # fmt: skip
    assert l3.rope.scaling == "llama3" and l3.rope.theta == 5e5 and l3.eos_token_id == 7
    ilm2 = {
        "architectures": ["InternLM2ForCausalLM"], "model_type": "internlm2", "bias": False,
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 92544, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
        "rope_theta": 1000000, "rope_scaling": {"type": "dynamic", "factor": 2.0}, "torch_dtype": "bfloat16",
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "tie_word_embeddings": False,
    }  # fmt: skip
    c = config_from_hf(ilm2)
    assert c.family == "internlm2" and not c.qkv_bias and c.num_kv_heads == 8 and c.param_dtype == "bfloat16"
    assert c.rope == RopeConfig(theta=1e6, scaling="dynamic", factor=2.0)
    ilm = {"model_type": "internlm", "bias": True, "rotary": {"base": 10000, "type": "dynamic"}, **base}
    c = config_from_hf(ilm)
    assert c.qkv_bias and c.o_bias and c.rope.scaling == "dynamic" and c.rope.factor == 1.0
    with pytest.raises(ValueError, match="yarn"):
        config_from_hf(dict(base, model_type="llama", rope_parameters={"rope_type": "yarn", "factor": 2.0}))
    with pytest.raises(ValueError, match="model_type"):
        config_from_hf(dict(base, model_type="gpt2"))
