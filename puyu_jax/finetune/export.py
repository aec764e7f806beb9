"""Export of a LoRA adapter in PEFT format (llama / qwen2 / mistral).

    adapter_config.json         peft_type LORA, r, lora_alpha, target_modules (HF module
                                names, or a full-match regex when only some layers are
                                targeted), base_model_name_or_path
    adapter_model.safetensors   base_model.model.{hf module}.lora_A.weight [r, in]
                                base_model.model.{hf module}.lora_B.weight [out, r]

Our factors A [in..., r] and B [r, out...] flatten in the same order as HF's Linear
weights (see `puyu_jax.models.hf`), so lora_A = A.reshape(-1, r).T, lora_B = B.reshape(r, -1).T.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from puyu_jax.finetune.lora import LoRAConfig, target_kernels
from puyu_jax.models.config import ModelConfig
from puyu_jax.models.hf import HF_NAMES

PEFT_FAMILIES = ("llama", "qwen2", "mistral")


def _hf_module(kernel: str) -> str:
    """Flat kernel name -> HF module name (e.g. model.layers.0.self_attn.q_proj)."""
    parts = kernel.split("/")
    if parts[0] == "layers":
        template, i = "/".join(["layers", "{i}", *parts[2:]]), parts[1]
    else:
        template, i = kernel, None
    return HF_NAMES["standard"][template].format(i=i).removesuffix(".weight")


def peft_tensors(cfg: ModelConfig, lora: LoRAConfig, trainable: dict) -> dict[str, np.ndarray]:
    """PEFT state dict (numpy float32) of the LoRA factors."""
    if cfg.family not in PEFT_FAMILIES:
        raise ValueError(f"PEFT export supports {PEFT_FAMILIES}, not {cfg.family!r} "
                         "(internlm2 fuses q/k/v into one wqkv; merge and export the full model instead)")
    out = {}
    for k in target_kernels(cfg, lora):
        m = k.removesuffix("/kernel")
        a, b = np.asarray(trainable[f"{m}/lora_a"], np.float32), np.asarray(trainable[f"{m}/lora_b"], np.float32)
        r = a.shape[-1]
        name = "base_model.model." + _hf_module(k)
        out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, r).T)
        out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b.reshape(r, -1).T)
    return out


def peft_target_modules(cfg: ModelConfig, lora: LoRAConfig) -> list[str] | str:
    """Short module names when every layer is targeted alike, else a full-match regex."""
    targets = target_kernels(cfg, lora)
    modules = [_hf_module(k) for k in targets]
    pairs = {(k.split("/")[1], m.rsplit(".", 1)[-1]) for k, m in zip(targets, modules) if k.startswith("layers/")}
    short = sorted({s for _, s in pairs})
    if len(pairs) == len(targets) and pairs == {(str(i), s) for i in range(cfg.num_layers) for s in short}:
        return short
    return "(" + "|".join(re.escape(m) for m in modules) + ")"


def export_peft(cfg: ModelConfig, lora: LoRAConfig, trainable: dict, out: str | Path,
                base_model_name_or_path: str = "") -> Path:
    """Writes adapter_config.json + adapter_model.safetensors into `out`; returns it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = peft_tensors(cfg, lora, trainable)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
        "target_modules": peft_target_modules(cfg, lora), "bias": "none", "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
        "use_rslora": False, "use_dora": False, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {},
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


def export_run_peft(run_dir: str | Path, out: str | Path, *, base: str = "", step: int | None = None) -> Path:
    """PEFT export of a LoRA / QLoRA run's latest (or given) checkpoint."""
    from puyu_jax.finetune.run import restore_trained, run_config
    from puyu_jax.pretrained import load_model_config

    cfg = run_config(run_dir)
    if cfg.mode == "full":
        raise ValueError("a full finetune has no adapter: use `puyu finetune merge --to hf`")
    trained, _ = restore_trained(run_dir, step)
    model_cfg = load_model_config(cfg.model)
    return export_peft(model_cfg, cfg.lora, trained, out, base or cfg.model)
