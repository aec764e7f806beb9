"""Perplexity windows and the `puyu quantize` command on a tiny model directory."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from puyu_jax.models import ModelConfig, init_model
from puyu_jax.quant.perplexity import HELDOUT_FILE, perplexity, windows

TINY = ModelConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=1, max_position_embeddings=128)


def test_perplexity_is_mean_nll_over_non_overlapping_windows():
    model = init_model(TINY, seed=0)
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, 2 * 16 + 5).astype(np.int32)
    tokens, valid = windows(ids, 16)
    assert tokens.shape == (3, 16) and valid.sum() == len(ids)
    r = perplexity(model, ids, seq_len=16, batch_size=2, progress=False)
    nll = []
    for start in (0, 16, 32):  # each window alone; its first token is not predicted
        w = ids[start:start + 16]
        logits = np.asarray(model(jnp.asarray(w[None]))[0][0], np.float64)
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
        nll += [-logp[j, w[j + 1]] for j in range(len(w) - 1)]
    assert r.tokens == len(nll) == 15 + 15 + 4 and r.windows == 3
    assert math.isclose(r.nll, float(np.mean(nll)), rel_tol=1e-5)
    assert math.isclose(r.ppl, math.exp(np.mean(nll)), rel_tol=1e-5)
    # the same windows scored through the serving engine's paged KV cache
    engine = perplexity(model, ids, seq_len=16, kv="auto", progress=False)
    assert engine.tokens == r.tokens and math.isclose(engine.nll, r.nll, rel_tol=1e-5)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny puyu checkpoint directory with a 320-token sentencepiece tokenizer."""
    import sentencepiece as spm

    from puyu_jax.checkpoint import save_checkpoint
    from puyu_jax.models import to_flat

    d = tmp_path_factory.mktemp("tiny")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(HELDOUT_FILE.read_text(encoding="utf-8")[:60000].splitlines()),
        model_prefix=str(d / "sp"), vocab_size=TINY.vocab_size, model_type="bpe", byte_fallback=True,
        character_coverage=0.99, hard_vocab_limit=False, num_threads=1, minloglevel=2,
        max_sentence_length=100000)
    model = init_model(TINY, seed=1)
    save_checkpoint(d / "model", TINY, {k: np.asarray(v) for k, v in to_flat(model).items()},
                    tokenizer_files={"tokenizer.model": d / "sp.model"})
    return d


def test_quantize_cli_awq_then_ppl(tiny_dir, tmp_path):
    from puyu_jax.cli import main

    out = tmp_path / "q"
    assert main(["quantize", "int4", str(tiny_dir / "model"), str(out), "--method", "awq", "--group-size", "16",
                 "--calib-samples", "2", "--calib-seq-len", "32"]) == 0
    assert (out / "quant.yaml").is_file() and (out / "tokenizer" / "tokenizer.model").is_file()
    import yaml

    meta = yaml.safe_load((out / "quant.yaml").read_text())
    assert meta["quant"]["method"] == "awq" and meta["quant"]["group_size"] == 16
    assert len(meta["quant"]["kernels"]) == 7 and meta["quant"]["calib_tokens"] == 64

    res = {}
    for name, args in (("fp", [str(tiny_dir / "model")]), ("awq", [str(out)]),
                       ("rtn", [str(tiny_dir / "model"), "--quant", "int4", "--method", "rtn", "--group-size", "16"])):
        path = tmp_path / f"{name}.json"
        assert main(["quantize", "ppl", *args, "--seq-len", "64", "--max-windows", "2", "--quiet",
                     "--json", str(path)]) == 0
        res[name] = json.loads(path.read_text())
    assert res["fp"]["windows"] == res["awq"]["windows"] == 2 and res["fp"]["tokens"] == 126
    assert "int4" in res["awq"]["label"] and "rtn" in res["rtn"]["label"]
    for r in res.values():  # a random model: perplexity near the vocabulary size
        assert 0.5 * TINY.vocab_size < r["ppl"] < 2 * TINY.vocab_size


def test_quantize_cli_gptq_then_ppl_on_two_texts(tiny_dir, tmp_path):
    from puyu_jax.cli import main
    from puyu_jax.quant.model import load_quantized

    out = tmp_path / "gptq"
    assert main(["quantize", "int4", str(tiny_dir / "model"), str(out), "--method", "gptq", "--group-size", "16",
                 "--kind", "sym", "--act-order", "--calib-samples", "2", "--calib-seq-len", "32"]) == 0
    import yaml

    meta = yaml.safe_load((out / "quant.yaml").read_text())["quant"]
    assert meta["method"] == "gptq" and meta["group_size"] == 16 and meta["kind"] == "sym"
    assert meta["act_order"] is True and meta["calib_tokens"] == 64 and len(meta["kernels"]) == 7
    w = load_quantized(out).model.layers[0].attn.o_proj.kernel.get_value()
    assert w.kind == "sym" and w.group_size == 16
    second = tmp_path / "second.txt"
    second.write_text(HELDOUT_FILE.read_text(encoding="utf-8")[-20000:], encoding="utf-8")
    path = tmp_path / "r.json"
    assert main(["quantize", "ppl", str(out), "--text", str(HELDOUT_FILE), "--text", str(second), "--seq-len", "64",
                 "--max-windows", "2", "--quiet", "--json", str(path)]) == 0
    res = json.loads(path.read_text())
    assert [r["text"] for r in res["results"]] == [str(HELDOUT_FILE), str(second)]
    assert res["results"][0]["ppl"] != res["results"][1]["ppl"]
    for r in res["results"]:
        assert r["windows"] == 2 and 0.5 * TINY.vocab_size < r["ppl"] < 2 * TINY.vocab_size
