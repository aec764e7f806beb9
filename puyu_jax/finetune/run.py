"""Finetuning runs: data + pretrained model + (adapter) -> the shared training loop; merge.

A run directory (cfg.train.out_dir) holds what `puyu train` writes (config.yaml, metrics.jsonl,
checkpoints/) plus `finetune.json` (mode, template, data statistics) and `tokenizer/`.
With LoRA / QLoRA the checkpoints hold only the LoRA factors and their optimizer state.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import numpy as np

from puyu_jax.assets import IDENTITY_SFT
from puyu_jax.config import REPO_ROOT, load_config
from puyu_jax.data.pack import resolve_tokenizer
from puyu_jax.finetune.config import FinetuneConfig
from puyu_jax.finetune.lora import LoRAAdapter, lora_shapes, merge_lora
from puyu_jax.finetune.sft import SFTStats, build_sft_data, resolve_template, sft_loader
from puyu_jax.models.params import to_flat
from puyu_jax.train.config import DataConfig, TrainConfig

RUN_META = "finetune.json"


def resolve_path(path: str) -> Path:
    """A data path: as given when it exists, else relative to the repo root; "" is the
    identity sample shipped with the package."""
    if not path:
        return IDENTITY_SFT
    p = Path(path).expanduser()
    return p if p.exists() or p.is_absolute() else REPO_ROOT / p


def load_model(cfg: FinetuneConfig):
    """(Pretrained, tokenizer) of the run's model source."""
    from puyu_jax.pretrained import load_pretrained

    pre = load_pretrained(cfg.model, dtype=cfg.dtype or None, param_dtype=cfg.param_dtype or None)
    if cfg.attention_impl:
        pre.cfg = pre.cfg.replace(attention_impl=cfg.attention_impl)
        pre.model.cfg = pre.cfg
    tok = pre.tokenizer
    if cfg.data.tokenizer:
        tok = load_tokenizer_source(cfg.data.tokenizer)
    if tok is None:
        raise ValueError(f"model {cfg.model!r} has no tokenizer: set data.tokenizer (a tokenizer dir, .gguf or smollm2)")
    return pre, tok


def load_tokenizer_source(source: str):
    return resolve_tokenizer(source)


def build_data(cfg: FinetuneConfig, tokenizer, model_chat_template: str) -> tuple[np.ndarray, SFTStats, str]:
    """Packed rows [n, 4, seq_len], statistics and the template used."""
    template = resolve_template(tokenizer, model_chat_template, cfg.data.template)
    rows, stats = build_sft_data(str(resolve_path(cfg.data.path)), tokenizer, template, seq_len=cfg.data.seq_len,
                                 fmt=cfg.data.format, pack=cfg.data.pack, seed=cfg.data.seed,
                                 system=cfg.data.system, substitutions=dict(cfg.data.substitutions))
    if not len(rows):
        raise ValueError(f"{cfg.data.path}: no usable example ({stats.bad_records} bad records; "
                         f"run `puyu finetune check-data {cfg.data.path}`)")
    return rows, stats, template


def train_config(cfg: FinetuneConfig, model_cfg) -> TrainConfig:
    """The TrainConfig the shared Trainer and loop run with."""
    return dataclasses.replace(cfg.train, model=model_cfg, data=DataConfig(seq_len=cfg.data.seq_len, seed=cfg.data.seed))


def finetune(cfg: FinetuneConfig, *, resume: bool = False, console=None, devices=None) -> dict:
    """Runs (or resumes) a finetuning run; returns the loop's summary plus data statistics."""
    from puyu_jax.train.loop import check_resume_config, train

    if resume:  # before the base model loads and anything in out_dir is rewritten
        check_resume_config(cfg.out_dir, cfg)
    pre, tok = load_model(cfg)
    rows, stats, template = build_data(cfg, tok, pre.cfg.chat_template)
    base = {k: np.asarray(v) for k, v in to_flat(pre.model).items()}
    del pre.model
    pi, pc = jax.process_index(), jax.process_count()
    it = sft_loader(rows, cfg.train.batch_size, cfg.data.seed, pi, pc)
    tcfg = train_config(cfg, pre.cfg)
    adapter = None if cfg.mode == "full" else LoRAAdapter(pre.cfg, cfg.lora, base, quantized=cfg.mode == "qlora")
    run_dir = Path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if pi == 0:
        tok.save(run_dir / "tokenizer")
        meta = {"model": cfg.model, "mode": cfg.mode, "template": template, "data": stats.summary()}
        (run_dir / RUN_META).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    summary = train(tcfg, resume=resume, console=console, devices=devices, data=it, adapter=adapter,
                    init_params=base if adapter is None else None, run_config=cfg)
    summary["data"] = stats.summary()
    if pi == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def run_config(run_dir: str | Path) -> FinetuneConfig:
    return load_config(FinetuneConfig, Path(run_dir) / "config.yaml")


def restore_trained(run_dir: str | Path, step: int | None = None) -> tuple[dict, int]:
    """(trained params — LoRA factors or the full flat dict — as numpy, step) from a run's checkpoints."""
    import orbax.checkpoint as ocp

    cfg = run_config(run_dir)
    directory = Path(cfg.train.checkpoint.dir) if cfg.train.checkpoint.dir else Path(run_dir) / "checkpoints"
    with ocp.CheckpointManager(directory.resolve()) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return {k: np.asarray(v) for k, v in restored.state["params"].items()}, step


def merged_params(run_dir: str | Path, step: int | None = None):
    """(model config, merged flat dict, tokenizer) of a run: LoRA folded into the
    full-precision base (QLoRA too: its factors are added to the unquantized weights)."""
    from puyu_jax.tokenizer import load_tokenizer

    cfg = run_config(run_dir)
    trained, _ = restore_trained(run_dir, step)
    pre, _ = load_model(cfg)
    tok = load_tokenizer(Path(run_dir) / "tokenizer")
    if cfg.mode == "full":
        return pre.cfg, trained, tok
    base = {k: np.asarray(v) for k, v in to_flat(pre.model).items()}
    expected = set(lora_shapes(pre.cfg, cfg.lora))
    if set(trained) != expected:
        raise KeyError(f"checkpoint LoRA names do not match the config: {sorted(set(trained) ^ expected)[:6]}")
    return pre.cfg, {k: np.asarray(v) for k, v in merge_lora(base, trained, cfg.lora).items()}, tok


def merge_run(run_dir: str | Path, out: str | Path, *, to: str = "puyu", step: int | None = None) -> Path:
    """Writes the merged model of a run as a puyu checkpoint (`to="puyu"`) or an HF dir."""
    from puyu_jax.checkpoint import save_checkpoint
    from puyu_jax.models.hf import save_hf_dir

    model_cfg, flat, tok = merged_params(run_dir, step)
    out = Path(out)
    if to == "hf":
        save_hf_dir(model_cfg, flat, out)
        tok.save(out)
    elif to == "puyu":
        files = {p.name: p for p in (Path(run_dir) / "tokenizer").iterdir() if p.is_file()}
        save_checkpoint(out, model_cfg, flat, tokenizer_files=files, overwrite=True)
    else:
        raise ValueError(f"to={to!r}: expected 'puyu' or 'hf'")
    return out
