"""PEFT export: peft + transformers load the adapter on the HF base and match puyu's logits."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft  # pinned: peft==0.21.2 (test extra)
import pytest

from puyu_jax.finetune.export import export_peft, peft_target_modules
from puyu_jax.finetune.lora import LoRAConfig, init_lora, lora_model
from puyu_jax.models.hf import load_hf_dir


@pytest.mark.parametrize("family, targets", [
    ("llama", r"layers/\d+/(attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)/kernel"),
    ("qwen2", r"layers/1/(attn/(q|o)_proj|mlp/down_proj)/kernel"),
])
def test_peft_adapter_matches_puyu_lora_logits(tmp_path, family, targets):
    import torch
    import transformers

    cls, conf = {"llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig),
                 "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config)}[family]
    hc = conf(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
    torch.manual_seed(0)
    cls(hc).save_pretrained(tmp_path / "base")
    cfg, flat = load_hf_dir(tmp_path / "base")
    lc = LoRAConfig(rank=4, alpha=8.0, targets=targets)
    tr = {k: v + 0.05 * jax.random.normal(jax.random.key(i), v.shape)
          for i, (k, v) in enumerate(sorted(init_lora(cfg, lc, 1).items()))}
    out = export_peft(cfg, lc, tr, tmp_path / "adapter", str(tmp_path / "base"))
    conf_json = json.loads((out / "adapter_config.json").read_text())
    assert conf_json["peft_type"] == "LORA" and conf_json["r"] == 4 and conf_json["lora_alpha"] == 8.0
    assert conf_json["target_modules"] == peft_target_modules(cfg, lc)
    model = peft.PeftModel.from_pretrained(cls.from_pretrained(tmp_path / "base"), out).eval()
    toks = np.arange(24)[None] * 7 % 256
    with torch.no_grad():
        ref = model(torch.tensor(toks)).logits.numpy()
        base = model.get_base_model()
        with model.disable_adapter():
            plain = base(torch.tensor(toks)).logits.numpy()
    got, _ = lora_model(cfg, lc, flat, tr)(jnp.asarray(toks))
    np.testing.assert_allclose(np.asarray(got), ref, atol=1e-4, rtol=0)
    assert np.abs(ref - plain).max() > 1e-2  # the adapter really changes the model
