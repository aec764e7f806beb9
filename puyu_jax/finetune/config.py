"""The typed config of a finetuning run (`puyu finetune train CONFIG key=value ...`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from puyu_jax.finetune.formats import FORMATS
from puyu_jax.finetune.lora import LoRAConfig
from puyu_jax.parallel.sharding import ParallelConfig
from puyu_jax.train.config import REMAT, CheckpointConfig, OptimizerConfig

MODES = ("full", "lora", "qlora")


@dataclass(frozen=True)
class SFTDataConfig:
    """Where finetuning examples come from and how they become sequences.

    `path` is resolved against the working directory, then the repo root. `format: text`
    (or plain-text records) is incremental pretraining: every token is trained.
    `template` is a chat-template name (chatml, internlm2, llama-3, ...) or "" for the
    tokenizer's own template (else the model config's). `substitutions` replaces literal
    text in every message (e.g. ``{"{{name}}": "Puyu"}`` for identity data).
    """

    path: str = "tests/finetune/data/identity.json"
    format: str = "auto"
    template: str = ""
    seq_len: int = 512
    pack: bool = True
    system: str = ""
    substitutions: dict[str, str] = field(default_factory=dict)
    tokenizer: str = ""  # a tokenizer source when the model has none ("" = the model's)
    seed: int = 0

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"data.format={self.format!r}: expected one of {FORMATS}")
        if self.seq_len < 8:
            raise ValueError("data.seq_len must be >= 8")


@dataclass(frozen=True)
class FinetuneConfig:
    """A finetuning run: a pretrained model, chat data, a mode (full / lora / qlora)."""

    # what the run's checkpoints depend on: `--resume` refuses a config that changes one of these
    CHECKPOINT_KEYS: ClassVar[tuple[str, ...]] = ("model", "mode", "lora.rank", "lora.targets", "lora.nf4_block",
                                                  "lora.nf4_scale_block")

    model: str = "smollm2"  # any `load_pretrained` source
    mode: str = "lora"
    dtype: str = ""  # compute dtype override ("" = the model's)
    param_dtype: str = ""  # storage dtype of the (frozen) base ("" = the model's)
    attention_impl: str = ""  # einsum / dot_product (cuDNN flash attention on GPU); "" = the model's
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=2e-4, warmup_steps=5, schedule="cosine", weight_decay=0.0, b2=0.999))
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=0, keep=1))
    steps: int = 50
    batch_size: int = 8
    grad_accum: int = 1
    remat: str = "none"
    nan_policy: str = "skip"
    log_every: int = 5
    seed: int = 0
    out_dir: str = "runs/finetune"
    tensorboard: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
        if self.remat not in REMAT:
            raise ValueError(f"remat={self.remat!r}: expected one of {REMAT}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
