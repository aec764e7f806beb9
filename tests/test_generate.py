"""`puyu generate` on the serving engine: greedy tokens equal the dense oracle's, streaming,
sweeps, and the deprecated config names."""

import json

import pytest
from oracle import DenseGenerator, save_tiny_checkpoint

from puyu_jax.generate import GenerateRunConfig, run_generate
from puyu_jax.serve.config import GenerationConfig


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, smollm2_gguf):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt", smollm2_gguf)


def test_generate_greedy_tokens_equal_the_oracle(tiny_ckpt, tmp_path):
    from puyu_jax.generate import encode_prompt
    from puyu_jax.pretrained import load_pretrained

    prompts = ("The sky is", "Count: one, two, three", "Hi")
    cfg = GenerateRunConfig(model=str(tiny_ckpt), prompts=prompts, sampling=GenerationConfig(max_new_tokens=12))
    metrics = run_generate(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    pre = load_pretrained(str(tiny_ckpt))
    ids = [encode_prompt(pre.tokenizer, p, chat=True) for p in prompts]
    want = DenseGenerator(pre.model).generate(ids, 12, stop_ids=pre.tokenizer.eos_ids)
    assert [r["token_ids"] for r in rows] == want
    assert [r["text"] for r in rows] == [pre.tokenizer.decode(w, skip_special=True) for w in want]
    assert metrics["new_tokens"] == sum(len(w) for w in want)


def test_generate_streams_one_prompt(tiny_ckpt, tmp_path):
    cfg = GenerateRunConfig(model=str(tiny_ckpt), prompts=("Once upon a time",), chat=False,
                            sampling=GenerationConfig(max_new_tokens=10))
    pieces = []
    run_generate(cfg, tmp_path, on_text=pieces.append)
    (row,) = [json.loads(line) for line in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    assert "".join(pieces) == row["text"] and len(row["token_ids"]) == 10


def test_deprecated_config_names_are_the_one_generation_config():
    import puyu_jax.generate as g

    with pytest.warns(DeprecationWarning, match="GenerationConfig"):
        assert g.SamplingConfig is GenerationConfig
    with pytest.warns(DeprecationWarning, match="GenerateRunConfig"):
        assert g.GenerateConfig is GenerateRunConfig
    assert not hasattr(g, "Generator")


def test_generate_sweep_runs_each_point_once(tmp_path, tiny_ckpt):
    """`puyu sweep` over the real generate run kind: hash-named dirs, cached on re-run."""
    from puyu_jax.sweep import run_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"run: generate\noverrides: [model={tiny_ckpt}, sampling.max_new_tokens=4]\n"
        f"grid:\n  sampling.temperature: [0.0, 1.0]\nout_dir: {tmp_path / 'out'}\n"
    )
    rows = run_sweep(sweep)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for r in rows:
        d = tmp_path / "out" / r["hash"]
        assert (d / "DONE").exists() and (d / "outputs.jsonl").exists() and (d / "config.yaml").exists()
    assert [r["status"] for r in run_sweep(sweep)] == ["cached", "cached"]
