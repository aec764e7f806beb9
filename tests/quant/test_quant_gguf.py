"""GGUF Q4_0 / Q4_1 / Q8_0 blocks served as they are: against gguf's own dequantizer, and SmolLM2
through `quant="native"` against the fp32-dequantized model."""

import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.models.gguf import GGUFBlocks
from puyu_jax.quant.gguf import weight_from_blocks
from puyu_jax.quant.int4 import Int4Weight, Int8Weight


@pytest.mark.parametrize("qtype,cls,kind", [("Q4_0", Int4Weight, "sym"), ("Q4_1", Int4Weight, "min"),
                                            ("Q8_0", Int8Weight, "sym")])
def test_blocks_equal_gguf_dequantize(qtype, cls, kind):
    """The re-packed weight dequantizes bit-for-bit to what the gguf package dequantizes, and the
    quantized matmul (twin and Pallas kernel in interpret mode) equals x @ that weight."""
    import gguf
    from gguf.quants import dequantize, quantize

    from puyu_jax.quant.model import quant_matmul

    n, k = 96, 128  # HF Linear [out, in]
    w = np.random.default_rng(0).normal(0, 0.05, (n, k)).astype(np.float32)
    t = gguf.GGMLQuantizationType[qtype]
    raw = quantize(w, t)
    want = np.asarray(dequantize(raw, t), np.float32).reshape(n, k).T  # kernel [K, N]
    qw = weight_from_blocks(GGUFBlocks(qtype, raw, (n, k)), (k, n))
    assert isinstance(qw, cls) and qw.kind == kind and qw.group_size == 32
    assert qw.nbytes == raw.nbytes  # the file's bytes, nothing more
    np.testing.assert_array_equal(np.asarray(qw.dequantize()), want)
    x = np.random.default_rng(1).normal(0, 1, (3, k)).astype(np.float32)
    ref = x.astype(np.float64) @ want
    for impl in ("reference", "pallas"):
        got = np.asarray(quant_matmul(jnp.asarray(x), qw, impl))
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-5)


def test_wrong_type_or_shape_is_a_clear_error():
    raw = np.zeros((4, 20), np.uint8)
    with pytest.raises(ValueError, match="Q6_K"):
        weight_from_blocks(GGUFBlocks("Q6_K", raw, (4, 32)), (32, 4))
    with pytest.raises(ValueError, match="does not fit"):
        weight_from_blocks(GGUFBlocks("Q4_1", raw, (4, 32)), (64, 2))


@pytest.fixture(scope="module")
def smollm2_pair(smollm2_gguf):
    from puyu_jax.pretrained import load_pretrained
    from puyu_jax.quant.gguf import load_native

    return load_native("smollm2"), load_pretrained(smollm2_gguf)


def test_smollm2_native_equals_fp32_dequantized(smollm2_pair, smollm2_gguf):
    import gguf

    from puyu_jax.quant.model import QuantEmbed, QuantProj, weight_nbytes

    native, fp = smollm2_pair
    layer = native.model.layers[0]
    assert isinstance(layer.mlp.down_proj, QuantProj) and layer.mlp.down_proj.kernel.get_value().kind == "min"
    assert isinstance(native.model.embed, QuantEmbed)  # Q8_0 table, also the tied lm_head
    assert isinstance(native.model.embed.embedding.get_value(), Int8Weight)
    tensor_bytes = sum(int(t.n_bytes) for t in gguf.GGUFReader(smollm2_gguf).tensors)
    resident = weight_nbytes(native.model)["total"]
    assert abs(resident - tensor_bytes) <= 0.001 * tensor_bytes, (resident, tensor_bytes)
    ids = native.tokenizer.encode("The capital of France is Paris. The tallest mountain on Earth is")
    tokens = jnp.asarray([ids])
    got, _ = native.model(tokens)
    want, _ = fp.model(tokens)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=0)
    assert np.array_equal(np.argmax(got, -1), np.argmax(want, -1))


def test_pipeline_native_greedy_equals_fp32(smollm2_pair):
    """The engine with the native weights: resident bytes reported, greedy answers equal to fp32."""
    from puyu_jax import GenerationConfig
    from puyu_jax.serve.config import EngineConfig
    from puyu_jax.serve.engine import LLMEngine
    from puyu_jax.serve.pipeline import Pipeline

    native, fp = smollm2_pair
    cfg = EngineConfig(num_blocks=64, max_num_seqs=4, quant="native")
    pn = Pipeline(LLMEngine(native.model, native.tokenizer, cfg))
    pf = Pipeline(LLMEngine(fp.model, fp.tokenizer, EngineConfig(num_blocks=64, max_num_seqs=4)))
    assert pn.engine.weight_bytes < 0.45 * pf.engine.weight_bytes
    gen = GenerationConfig(max_new_tokens=12)
    questions = [[{"role": "user", "content": q}] for q in
                 ("What is the capital of France?", "Name three primary colors.")]
    a, b = pn.chat(questions, gen), pf.chat(questions, gen)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert "Paris" in a[0].text


def test_serve_defaults_to_native_for_a_quantized_gguf(capsys):
    from puyu_jax.serve.api.config import ServeConfig
    from puyu_jax.serve.cli import _native_by_default

    cfg = _native_by_default(ServeConfig(model="smollm2"))
    assert cfg.engine.quant == "native"
    assert "Q4_1" in capsys.readouterr().err  # said at start-up
    assert _native_by_default(ServeConfig(model="tiny")).engine.quant == "none"


def test_native_needs_a_gguf():
    from puyu_jax.quant.gguf import load_native

    with pytest.raises(ValueError, match="quant='int4'"):
        load_native("tiny")
