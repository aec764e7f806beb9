"""SmolLM2-135M-Instruct on 20-item subsets of MMLU, ARC-e, PIQA (PPL) and GSM8K (chat generation)."""

import json

import pytest

from puyu_jax.config import load_config
from puyu_jax.eval import EvalConfig, run_eval
from puyu_jax.eval.config import REPO_ROOT


@pytest.mark.slow
def test_smollm2_subsets(tmp_path):
    # smaller than the shipped config (20 items, 256 new tokens) to keep the suite short
    cfg = load_config(EvalConfig, REPO_ROOT / "configs/eval/smollm2-subsets.yaml",
                      [f"out_dir={tmp_path}", 'dataset_overrides=["max_samples=10", "inferencer.max_out_len=64"]'])
    out = run_eval(cfg, progress=False)
    scores = out["results"]["smollm2"]
    print(json.dumps(scores))
    assert set(scores) == {"MMLU", "ARC-e", "PIQA", "GSM8K"}
    # a 135M model: well above chance on ARC-e and PIQA, near chance on MMLU, little on GSM8K
    assert scores["ARC-e"] >= 40 and scores["PIQA"] >= 60
    assert 5 <= scores["MMLU"] <= 70 and 0 <= scores["GSM8K"] <= 40
