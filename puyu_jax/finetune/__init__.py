"""Finetuning (XTuner on JAX): chat SFT with assistant-only loss and packing; full, LoRA
and QLoRA (NF4) on the shared train step; merge; export to Hugging Face and PEFT.

    from puyu_jax.finetune import FinetuneConfig, finetune, load_dataset, LoRAConfig
"""

from puyu_jax.finetune.config import MODES, FinetuneConfig, SFTDataConfig
from puyu_jax.finetune.estimate import MemoryEstimate, estimate_memory, measure_step_memory
from puyu_jax.finetune.export import export_peft, export_run_peft, peft_tensors
from puyu_jax.finetune.formats import FORMATS, LoadResult, RecordError, Sample, detect_format, load_dataset
from puyu_jax.finetune.lora import (
    LoRAAdapter,
    LoRAConfig,
    LoRAProj,
    init_lora,
    lora_model,
    merge_lora,
    quantize_base,
    target_kernels,
)
from puyu_jax.finetune.run import finetune, merge_run, merged_params
from puyu_jax.finetune.sft import build_sft_data, encode_sample, pack_examples, preview, sft_loader
from puyu_jax.quant.nf4 import NF4_TABLE, NF4Tensor, quantize_nf4  # NF4 lives in quant/; kept here for QLoRA users

__all__ = [
    "FORMATS", "MODES", "NF4_TABLE", "FinetuneConfig", "LoRAAdapter", "LoRAConfig", "LoRAProj", "LoadResult",
    "MemoryEstimate", "NF4Tensor", "RecordError", "SFTDataConfig", "Sample", "build_sft_data", "detect_format",
    "encode_sample", "estimate_memory", "export_peft", "export_run_peft", "finetune", "init_lora", "load_dataset",
    "lora_model", "measure_step_memory", "merge_lora", "merge_run", "merged_params", "pack_examples", "peft_tensors",
    "preview", "quantize_base", "quantize_nf4", "sft_loader", "target_kernels",
]
