"""puyu checkpoint directory (orbax) and format conversion."""

import json

import jax
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from puyu_jax.checkpoint import (
    checkpoint_shapes,
    flatten,
    load_checkpoint,
    model_config_from_yaml,
    model_config_to_yaml,
    nest,
    save_checkpoint,
)
from puyu_jax.models.config import ModelConfig, RopeConfig
from puyu_jax.models.hf import flat_shapes, load_hf_dir
from puyu_jax.pretrained import convert, resolve


def detect_format(path) -> str:
    return resolve(path)[0]

CFG = ModelConfig(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
    rope=RopeConfig(theta=5e5, scaling="llama3", factor=8.0, original_max_position_embeddings=8192),
    rms_norm_eps=1e-5, tie_word_embeddings=True, chat_template="chatml",
)  # fmt: skip


def random_flat(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    flat = {k: rng.standard_normal(s).astype(np.float32) for k, s in flat_shapes(CFG).items()}
    flat["layers/1/attn/q_proj/kernel"] = flat["layers/1/attn/q_proj/kernel"].astype(ml_dtypes.bfloat16)
    flat["final_norm/scale"] = flat["final_norm/scale"].astype(ml_dtypes.bfloat16)
    return flat


def assert_same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), k


def test_nest_flatten():
    flat = {"a/b/c": 1, "a/d": 2, "e": 3}
    assert nest(flat) == {"a": {"b": {"c": 1}, "d": 2}, "e": 3}
    assert flatten(nest(flat)) == flat
    with pytest.raises(ValueError):
        nest({"a/b": 1, "a/b/c": 2})


def test_save_load_bit_identical(tmp_path):
    flat = random_flat()
    src_tok = tmp_path / "tok.model"
    src_tok.write_bytes(b"\x00sp")
    out = save_checkpoint(tmp_path / "ck", CFG, flat, tokenizer_files={"tokenizer.json": b"{}", "tok.model": src_tok})
    assert sorted(p.name for p in out.iterdir()) == ["model.yaml", "params", "tokenizer"]
    assert (out / "tokenizer" / "tok.model").read_bytes() == b"\x00sp"
    assert detect_format(out) == "puyu"
    cfg, back = load_checkpoint(out)
    assert cfg == CFG
    assert all(type(v) is np.ndarray for v in back.values())
    assert_same(flat, back)
    shapes = checkpoint_shapes(out)
    assert shapes["layers/1/attn/q_proj/kernel"] == ((32, 4, 8), np.dtype(ml_dtypes.bfloat16))

    cfg16, back16 = load_checkpoint(out, dtype="bfloat16")
    assert cfg16.param_dtype == "bfloat16"
    for k, v in back16.items():
        assert v.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(v, flat[k].astype(ml_dtypes.bfloat16))

    with pytest.raises(FileExistsError):
        save_checkpoint(out, CFG, flat)
    flat2 = random_flat(1)
    save_checkpoint(out, CFG.replace(num_layers=2, eos_token_id=7), flat2, overwrite=True)
    cfg2, back2 = load_checkpoint(out)
    assert cfg2.eos_token_id == 7
    assert_same(flat2, back2)


def test_sharded_restore(tmp_path):
    mesh = jax.make_mesh((8,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
    flat = random_flat()
    # a sharded jax array is saved as well
    flat["embed/embedding"] = jax.device_put(flat["embed/embedding"], NamedSharding(mesh, P("x", None)))
    save_checkpoint(tmp_path / "ck", CFG, flat)
    shardings = {
        "embed/embedding": NamedSharding(mesh, P(None, "x")),
        "layers/0/mlp/up_proj/kernel": NamedSharding(mesh, P(None, "x")),
        "layers/1/attn/q_proj/kernel": NamedSharding(mesh, P("x", None, None)),
        "final_norm/scale": NamedSharding(mesh, P()),
    }
    _, back = load_checkpoint(tmp_path / "ck", shardings=shardings)
    for k, v in back.items():
        want = np.asarray(flat[k])
        if k in shardings:
            assert isinstance(v, jax.Array) and v.sharding == shardings[k], k
            assert len(v.addressable_shards) == 8
        else:
            assert type(v) is np.ndarray
        assert v.dtype == want.dtype and np.array_equal(np.asarray(v), want), k
    _, back32 = load_checkpoint(tmp_path / "ck", shardings=shardings, dtype=np.float32)
    assert back32["layers/1/attn/q_proj/kernel"].dtype == np.float32
    assert back32["layers/1/attn/q_proj/kernel"].sharding == shardings["layers/1/attn/q_proj/kernel"]
    with pytest.raises(KeyError, match="nope"):
        load_checkpoint(tmp_path / "ck", shardings={"nope": NamedSharding(mesh, P())})


@pytest.mark.parametrize(
    "cfg",
    [
        CFG,
        ModelConfig(),
        ModelConfig(family="qwen2", qkv_bias=True, sliding_window=4096, rope=RopeConfig(theta=1e6), rms_norm_eps=1e-6),
        ModelConfig(family="internlm2", rope=RopeConfig(scaling="dynamic", factor=2.5), dtype="bfloat16"),
    ],
)
def test_model_yaml_round_trip(tmp_path, cfg):
    text = model_config_to_yaml(cfg)
    assert "rope:\n  theta:" in text
    (tmp_path / "model.yaml").write_text(text)
    assert model_config_from_yaml(tmp_path / "model.yaml") == cfg
    assert model_config_from_yaml(tmp_path) == cfg
    (tmp_path / "model.yaml").write_text(text + "bogus: 1\n")
    with pytest.raises(ValueError, match="bogus"):
        model_config_from_yaml(tmp_path)


def test_convert_hf_puyu_hf(tmp_path):
    import torch as torch
    import transformers as transformers
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=128, intermediate_size=96, tie_word_embeddings=True,
    )  # fmt: skip
    model = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    src = tmp_path / "hf"
    model.save_pretrained(src)
    (src / "tokenizer.json").write_text('{"model": {}}')
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": "<|im_start|>"}))

    ck = convert(src, tmp_path / "puyu", to="puyu")
    assert detect_format(ck) == "puyu"
    assert {p.name for p in (ck / "tokenizer").iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "generation_config.json"}  # fmt: skip
    cfg, flat = load_checkpoint(ck)
    hcfg, hflat = load_hf_dir(src)
    assert cfg == hcfg and cfg.family == "qwen2" and cfg.chat_template == "chatml"
    assert_same(flat, hflat)

    out = convert(ck, tmp_path / "hf2", to="hf")
    assert detect_format(out) == "hf"
    assert (out / "tokenizer.json").read_text() == '{"model": {}}'
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    want, got = model.state_dict(), loaded.state_dict()
    assert set(want) == set(got) and all(torch.equal(want[k], got[k]) for k in want)


def _tiny_gguf(path):
    import gguf

    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    for add, v in [("block_count", 1), ("context_length", 64), ("embedding_length", 32),
                   ("feed_forward_length", 64), ("head_count", 4), ("head_count_kv", 2)]:  # fmt: skip
        getattr(w, f"add_{add}")(v)
    w.add_token_list([f"t{i}" for i in range(40)])
    shapes = {"token_embd.weight": (40, 32), "output_norm.weight": (32,), "blk.0.attn_norm.weight": (32,),
              "blk.0.ffn_norm.weight": (32,), "blk.0.attn_q.weight": (32, 32), "blk.0.attn_k.weight": (16, 32),
              "blk.0.attn_v.weight": (16, 32), "blk.0.attn_output.weight": (32, 32),
              "blk.0.ffn_gate.weight": (64, 32), "blk.0.ffn_up.weight": (64, 32), "blk.0.ffn_down.weight": (32, 64)}  # fmt: skip
    for name, s in shapes.items():
        w.add_tensor(name, rng.standard_normal(s).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_convert_gguf(tmp_path, monkeypatch):
    from puyu_jax.models.gguf import load_gguf

    src = tmp_path / "m.gguf"
    _tiny_gguf(src)
    assert detect_format(src) == "gguf"
    calls = []

    class FakeTokenizer:
        def save(self, d):
            (d / "tokenizer.json").write_text("{}")

    monkeypatch.setattr("puyu_jax.pretrained.tokenizer_from_gguf", lambda p: calls.append(p) or FakeTokenizer())

    gcfg, gflat, _ = load_gguf(src)
    ck = convert(src, tmp_path / "puyu", to="puyu")
    assert calls == [src] and (ck / "tokenizer" / "tokenizer.json").exists()
    cfg, flat = load_checkpoint(ck)
    assert cfg == gcfg and cfg.tie_word_embeddings
    assert_same(flat, gflat)
    out = convert(src, tmp_path / "hf", to="hf", dtype="bfloat16")
    hcfg, hflat = load_hf_dir(out)
    assert hcfg.param_dtype == "bfloat16" and (out / "tokenizer.json").exists()
    assert all(np.array_equal(hflat[k], gflat[k].astype(ml_dtypes.bfloat16)) for k in gflat)
    with pytest.raises(ValueError, match="to="):
        convert(src, tmp_path / "x", to="gguf")
