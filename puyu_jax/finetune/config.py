"""The typed config of a finetuning run (`puyu finetune train CONFIG key=value ...`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from puyu_jax.finetune.formats import FORMATS
from puyu_jax.finetune.lora import LoRAConfig
from puyu_jax.train.config import CheckpointConfig, OptimizerConfig, TrainConfig

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

    path: str = ""  # "" = the identity sample shipped with the package (puyu_jax/finetune/assets)
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


def _finetune_defaults() -> TrainConfig:
    """Training settings suited to finetuning (the `train` part of a FinetuneConfig)."""
    return TrainConfig(
        optimizer=OptimizerConfig(lr=2e-4, warmup_steps=5, schedule="cosine", weight_decay=0.0, b2=0.999),
        checkpoint=CheckpointConfig(every=0, keep=1), steps=50, batch_size=8, log_every=5, out_dir="runs/finetune")


@dataclass(frozen=True)
class FinetuneConfig:
    """A finetuning run: a pretrained model, chat data, a mode (full / lora / qlora).

    `train` is the shared `TrainConfig` (optimizer, parallel, checkpoint, steps, batch_size,
    grad_accum, remat, z_loss, nan_policy, log_every, seed, out_dir, tensorboard), written
    flat in YAML and overrides (``steps=100``, ``optimizer.lr=1e-4``). Its `model` and `data`
    are filled from this run's pretrained model and `data.seq_len` / `data.seed`.
    """

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
    train: TrainConfig = field(default_factory=_finetune_defaults, metadata={"embed": True})

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {MODES}")
