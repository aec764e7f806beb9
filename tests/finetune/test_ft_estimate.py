"""Memory estimate: within 25% of XLA's buffer assignment on CPU; InternLM2-7B QLoRA fits 8 GiB."""

import pytest

from puyu_jax.finetune.estimate import GiB, estimate_memory, format_table, measure_step_memory
from puyu_jax.finetune.lora import LoRAConfig
from puyu_jax.models import ModelConfig

SMALL = ModelConfig(vocab_size=2048, hidden_size=384, intermediate_size=1024, num_layers=3, num_heads=6,
                    num_kv_heads=2, max_position_embeddings=1024)


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_estimate_matches_measured_step_memory(mode):
    est = estimate_memory(SMALL, mode, seq_len=256, batch=2)
    measured = measure_step_memory(SMALL, mode, seq_len=256, batch=2)
    assert abs(est.total / measured["total"] - 1) < 0.25, (est.rows(), measured)


def test_internlm2_7b_qlora_fits_in_8_gib():
    from puyu_jax.pretrained import load_model_config

    cfg = load_model_config("internlm2-7b").replace(dtype="bfloat16", param_dtype="bfloat16", attention_impl="dot_product")
    rows = {m: estimate_memory(cfg, m, seq_len=2048, batch=1, lora=LoRAConfig(rank=8), remat="full")
            for m in ("full", "lora", "qlora")}
    assert rows["qlora"].total <= 8 * GiB < rows["lora"].total < rows["full"].total
    assert 0.5 < rows["qlora"].weights / (7.74e9 * 0.5) < 1.5 and rows["qlora"].trainable < 0.01 * rows["full"].trainable
    assert "qlora" in format_table(rows)
