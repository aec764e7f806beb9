"""End to end: LoRA SFT on a tiny HF Llama -> adapter checkpoint -> merge / HF / PEFT; the CLI."""

import argparse
import json

import jax
import numpy as np
import pytest

from puyu_jax.assets import IDENTITY_SFT
from puyu_jax.config import load_config
from puyu_jax.finetune.cli import add_parser
from puyu_jax.finetune.config import FinetuneConfig

from conftest import DATA


def _cli(*argv) -> int:
    p = argparse.ArgumentParser(prog="puyu")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["finetune", *map(str, argv)])
    return args.fn(args)


def _cfg(model, out, **over):
    base = {"model": str(model), "mode": "lora", "out_dir": str(out), "steps": 6, "batch_size": 4, "log_every": 3,
            "parallel": {"data": 1}, "tensorboard": False,
            "data": {"path": str(IDENTITY_SFT), "seq_len": 128, "substitutions": {"{{name}}": "Puyu"}},
            "lora": {"rank": 4, "alpha": 8.0, "dropout": 0.05}, "optimizer": {"lr": 1e-2, "warmup_steps": 1}}
    return load_config(FinetuneConfig, base, [f"{k}={v}" for k, v in over.items()])


@pytest.mark.slow
def test_lora_finetune_merge_and_exports(tiny_hf_dir, tmp_path):
    import torch
    import transformers

    from puyu_jax.finetune.export import export_run_peft
    from puyu_jax.finetune.run import finetune, merge_run, restore_trained

    cfg = _cfg(tiny_hf_dir, tmp_path / "run")
    s = finetune(cfg, devices=jax.devices()[:1])
    assert s["step"] == 6 and s["data"]["samples"] == 40 and np.isfinite(s["loss"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    ckpt = sum(f.stat().st_size for f in (tmp_path / "run" / "checkpoints").rglob("*") if f.is_file())
    base = sum(f.stat().st_size for f in tiny_hf_dir.glob("*.safetensors"))
    assert ckpt < base / 4  # adapter + its optimizer state only
    trained, step = restore_trained(tmp_path / "run")
    assert step == 6 and all(k.endswith(("lora_a", "lora_b")) for k in trained)

    hf = merge_run(tmp_path / "run", tmp_path / "merged", to="hf")
    merged = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    peft_dir = export_run_peft(tmp_path / "run", tmp_path / "peft", base=str(tiny_hf_dir))
    import peft

    adapted = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(tiny_hf_dir), peft_dir).eval()
    toks = torch.tensor([[1, 200, 300, 400, 500, 600]])
    with torch.no_grad():
        a, b = merged(toks).logits.numpy(), adapted(toks).logits.numpy()
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert (tmp_path / "peft" / "adapter_model.safetensors").stat().st_size < base / 10
    assert _cli("merge", tmp_path / "run", tmp_path / "merged-puyu") == 0
    assert (tmp_path / "merged-puyu" / "model.yaml").exists() and (tmp_path / "merged-puyu" / "tokenizer").is_dir()


def test_full_and_qlora_modes_run(tiny_hf_dir, tmp_path):
    from puyu_jax.finetune.run import finetune

    for mode in ("full", "qlora"):
        s = finetune(_cfg(tiny_hf_dir, tmp_path / mode, mode=mode, steps=2), devices=jax.devices()[:1])
        assert s["step"] == 2 and np.isfinite(s["loss"])


def test_cli_check_data_preview_estimate(capsys):
    assert _cli("check-data", DATA / "bad_records.jsonl") == 1
    out = capsys.readouterr().out
    assert "record 2 [sharegpt]: conversations[1]: unknown 'from' 'robot'" in out and "8 bad" in out
    assert _cli("check-data", DATA / "oasst.jsonl", "--tokenizer", "smollm2") == 0
    assert _cli("preview", DATA / "oasst.jsonl", "--plain", "-i", "2") == 0
    assert "⟦Crisp leaves drift and fall," in capsys.readouterr().out
    assert _cli("estimate", "configs/finetune/internlm2-7b-qlora.yaml") == 0
    out = capsys.readouterr().out
    total = next(x for x in out.splitlines() if x.startswith("total")).split()
    assert float(total[3]) <= 8.0  # qlora column, GiB


@pytest.mark.parametrize("path", sorted((DATA.parents[2] / "configs" / "finetune").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_finetune_configs_load(path):
    cfg = load_config(FinetuneConfig, path)
    assert cfg.mode in ("lora", "qlora", "full")
