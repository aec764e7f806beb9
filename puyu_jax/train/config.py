"""The typed config of a training run (`puyu train CONFIG key=value ...`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from puyu_jax.models.config import ModelConfig
from puyu_jax.parallel.sharding import ParallelConfig

REMAT = ("none", "full", "save_dots")


@dataclass(frozen=True)
class DataConfig:
    """Where training sequences come from.

    source `text`: a plain-text file ("" = the tinyshakespeare excerpt shipped with the
    package), tokenized whole and cut into `seq_len` windows; the tokenizer is `tokenizer`
    (a tokenizer dir or .gguf) or, when empty, a byte-fallback sentencepiece BPE of
    `vocab_size` trained on the text (deterministic, saved into the run directory).
    source `packed`: a directory written by `puyu data tokenize` (index.json + array_record).
    """

    source: str = "text"
    path: str = ""
    tokenizer: str = ""
    vocab_size: int = 512
    seq_len: int = 128
    seed: int = 0
    worker_count: int = 0

    def __post_init__(self):
        if self.source not in ("text", "packed"):
            raise ValueError(f"data.source={self.source!r}: expected 'text' or 'packed'")
        if self.seq_len < 2:
            raise ValueError("data.seq_len must be >= 2")


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with warmup then cosine / linear decay (to lr * min_lr_ratio) or constant."""

    lr: float = 3e-3
    warmup_steps: int = 20
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"optimizer.schedule={self.schedule!r}: expected cosine, linear or constant")


@dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints of params, optimizer state, data-loader state and step."""

    every: int = 100  # steps; 0 disables periodic saves (a final save still happens)
    keep: int = 3
    async_save: bool = True
    dir: str = ""  # default: <out_dir>/checkpoints


@dataclass(frozen=True)
class TrainConfig:
    # what a checkpoint's arrays depend on: `--resume` refuses a config that changes one of these
    CHECKPOINT_KEYS: ClassVar[tuple[str, ...]] = (
        "model.family", "model.vocab_size", "model.hidden_size", "model.intermediate_size", "model.num_layers",
        "model.num_heads", "model.num_kv_heads", "model.head_dim", "model.qkv_bias", "model.o_bias",
        "model.tie_word_embeddings")

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    steps: int = 200
    batch_size: int = 16  # global sequences per optimizer step
    grad_accum: int = 1  # micro-batches per step (batch_size must divide evenly)
    remat: str = "none"
    z_loss: float = 0.0
    nan_policy: str = "skip"  # skip: drop the update and count it; stop: raise
    log_every: int = 10
    seed: int = 0
    out_dir: str = "runs/train"
    tensorboard: bool = True

    def __post_init__(self):
        if self.remat not in REMAT:
            raise ValueError(f"remat={self.remat!r}: expected one of {REMAT}")
        if self.nan_policy not in ("skip", "stop"):
            raise ValueError(f"nan_policy={self.nan_policy!r}: expected 'skip' or 'stop'")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}")
