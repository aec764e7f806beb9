"""The training loop: a thin shell around `Trainer.step_fn` that owns data, checkpoints and logs."""

from __future__ import annotations

import json
import shutil
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml

from puyu_jax.checkpoint import flatten
from puyu_jax.config import ConfigError, config_hash, save_run_config, to_yaml
from puyu_jax.data.loader import loader_state, restore_loader
from puyu_jax.train.config import TrainConfig
from puyu_jax.train.metrics import MetricsWriter, device_peak_flops
from puyu_jax.train.step import Trainer, batch_keys, model_flops_per_token


class NonFiniteLossError(RuntimeError):
    pass


def make_data(cfg: TrainConfig, run_dir: Path):
    """(iterator of host batches, tokenizer or None) for this process's share of the batch."""
    pi, pc = jax.process_index(), jax.process_count()
    if cfg.data.source == "packed":
        from puyu_jax.data.loader import make_loader

        it = make_loader(cfg.data.path, batch_size=cfg.batch_size // pc, seed=cfg.data.seed,
                         shard_index=pi, shard_count=pc, worker_count=cfg.data.worker_count)
        return it, None
    from puyu_jax.train.text_data import text_loader, text_windows

    windows, tok = text_windows(cfg.data, run_dir)
    if tok.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"tokenizer has {tok.vocab_size} tokens but model.vocab_size={cfg.model.vocab_size}")
    return text_loader(windows, cfg.batch_size, cfg.data.seed, pi, pc), tok


def _checkpoint_dir(cfg: TrainConfig, run_dir: Path) -> Path:
    return (Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else run_dir / "checkpoints").resolve()


def _checkpoint_manager(cfg: TrainConfig, run_dir: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=cfg.checkpoint.keep,
                                           enable_async_checkpointing=cfg.checkpoint.async_save)
    return ocp.CheckpointManager(_checkpoint_dir(cfg, run_dir), options=options)


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def check_resume_config(run_dir: str | Path, run_config) -> None:
    """Refuses a resume whose config differs from the run's saved one in what its checkpoints depend on.

    Compares `run_dir/config.yaml` with `run_config` on the keys (or key prefixes) of
    `type(run_config).CHECKPOINT_KEYS` (model shapes, the base model): a checkpoint of one shape
    cannot be restored into another. Reads nothing but config.yaml; writes nothing.

    Raises:
      ConfigError: one line naming each differing key with its saved and new value.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.exists():  # nothing saved to compare with (a fresh run, or checkpoints from elsewhere)
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--resume: cannot read the run's {path}: {e}") from None
    old = {k.replace("/", "."): v for k, v in flatten(old).items()} if isinstance(old, dict) else {}
    new = {k.replace("/", "."): v for k, v in flatten(yaml.safe_load(to_yaml(run_config))).items()}
    keys = getattr(type(run_config), "CHECKPOINT_KEYS", ("model",))
    missing = "<unset>"
    diff = [k for k in sorted(set(old) | set(new)) if _matches(k, keys) and old.get(k, missing) != new.get(k, missing)]
    if diff:
        changes = ", ".join(f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in diff)
        raise ConfigError(f"--resume: the checkpoints in {run_dir} cannot take this config ({changes}); resume with "
                          f"the run's own config.yaml, or start a new out_dir")


def _restore_latest_intact(mngr: ocp.CheckpointManager, trainer: Trainer, ckpt_dir: Path, console):
    """Restores the newest checkpoint that reads back whole; (step, restored). Damaged newer ones are moved aside.

    A checkpoint is damaged when any of its files fails to read (truncated, corrupt); orbax's own
    temporary directories (a save cut short) are never listed as steps in the first place.
    """
    steps = sorted(mngr.all_steps(), reverse=True)
    damaged: list[tuple[int, str]] = []
    for step in steps:
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(trainer.abstract_state()),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ))
        except Exception as e:  # orbax / tensorstore / json raise many types for a damaged file
            damaged.append((step, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"))
            continue
        if damaged:
            aside = ckpt_dir.with_name(ckpt_dir.name + ".damaged")
            if jax.process_index() == 0:
                aside.mkdir(parents=True, exist_ok=True)
                for bad, _ in damaged:
                    target = aside / str(bad)
                    if target.exists():
                        target = aside / f"{bad}.{int(time.time())}"
                    shutil.move(str(ckpt_dir / str(bad)), target)
            mngr.reload()
            lost = f"step {step + 1}" if damaged[0][0] == step + 1 else f"steps {step + 1}-{damaged[0][0]}"
            for bad, why in damaged:
                _say(console, f"warning: checkpoint {bad} in {ckpt_dir} is unreadable ({why}); moved to {aside}")
            _say(console, f"warning: resuming from step {step}, the newest intact checkpoint: training progress "
                          f"of {lost} was lost and is trained again")
        return step, restored
    raise ConfigError(f"--resume: no checkpoint in {ckpt_dir} reads back whole: "
                       + "; ".join(f"step {s}: {why}" for s, why in damaged))


def _global_batch(trainer: Trainer, host_batch: dict) -> dict:
    """Host-local rows -> global arrays (multi-process: each process supplies its rows)."""
    if jax.process_count() == 1:
        return trainer.shard_batch(host_batch)
    a = trainer.cfg.grad_accum
    out = {}
    for k in batch_keys(host_batch):
        x = np.asarray(host_batch[k], np.int32)
        x = x.reshape(a, x.shape[0] // a, *x.shape[1:])
        out[k] = jax.make_array_from_process_local_data(trainer.batch_sharding, x)
    return out


def train(cfg: TrainConfig, *, resume: bool = False, console=None, devices=None,
          data=None, adapter=None, init_params: dict | None = None, run_config=None) -> dict:
    """Runs (or resumes) a training run; returns the final summary.

    Writes into cfg.out_dir: config.yaml + config.hash, metrics.jsonl, tensorboard/,
    checkpoints/ (params, optimizer state, step, data-loader state, config hash).

    Finetuning hooks (all optional): `data` a checkpointable iterator of host batches
    (instead of cfg.data), `adapter` (see `Trainer.create`; checkpoints then hold only the
    trainable parameters), `init_params` starting weights instead of a random init,
    `run_config` the config saved (and hashed) in the run directory instead of `cfg`.
    """
    run_dir = Path(cfg.out_dir)
    saved = cfg if run_config is None else run_config
    if resume:  # before anything in the run directory is written or read
        check_resume_config(run_dir, saved)
    run_dir.mkdir(parents=True, exist_ok=True)
    chash = save_run_config(saved, run_dir) if jax.process_index() == 0 else config_hash(saved)
    it = data if data is not None else make_data(cfg, run_dir)[0]
    trainer = Trainer.create(cfg, devices, adapter=adapter)
    mngr = _checkpoint_manager(cfg, run_dir)
    start = 0
    if resume and mngr.latest_step() is not None:
        start, restored = _restore_latest_intact(mngr, trainer, _checkpoint_dir(cfg, run_dir), console)
        state = restored.state
        restore_loader(it, restored.data)
        if restored.meta.get("config_hash") != chash:
            _say(console, f"note: resuming a checkpoint written with config {restored.meta.get('config_hash')}, now {chash}")
        _say(console, f"resumed from step {start}")
    else:
        state = trainer.init_state(params=init_params)

    stop = {"flag": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    writer = MetricsWriter(run_dir, cfg.tensorboard)
    flops_per_token = model_flops_per_token(cfg.model, cfg.data.seq_len)
    peak, peak_src = device_peak_flops()
    n_dev = trainer.mesh.size

    def save(step: int) -> None:
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(loader_state(it)),
            meta=ocp.args.JsonSave({"step": step, "config_hash": chash, "seed": cfg.seed, "data_seed": cfg.data.seed}),
        ), force=True)

    summary: dict = {"start_step": start, "peak_flops_per_device": peak, "peak_source": peak_src}
    t_last = t_begin = time.perf_counter()
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            host_batch = next(it)
            t_data = time.perf_counter() - t0
            state, m = trainer.step_fn(state, _global_batch(trainer, host_batch))
            m = jax.device_get(m)  # one host sync per step: the loss is logged every step
            now = time.perf_counter()
            step_time, t_last = now - t_last, now
            if not m["finite"]:
                if cfg.nan_policy == "stop":
                    raise NonFiniteLossError(f"non-finite loss or gradient at step {step + 1}; stopping (nan_policy=stop)")
                _say(console, f"step {step + 1}: non-finite loss/grad, update skipped")
            tokens = cfg.batch_size * cfg.data.seq_len
            row = {
                "loss": float(m["loss"]), "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"]),
                "tokens_per_s": tokens / step_time, "tokens_per_s_per_device": tokens / step_time / n_dev,
                "mfu": flops_per_token * tokens / step_time / (peak * n_dev),
                "step_time_s": step_time, "data_time_s": t_data, "skipped": int(state["skipped"]) if not m["finite"] else None,
            }
            row = {k: v for k, v in row.items() if v is not None}
            writer.write(step + 1, row)
            if (step + 1) % cfg.log_every == 0 or step == start or step + 1 == cfg.steps:
                done_here = step + 1 - start
                eta = (now - t_begin) / done_here * (cfg.steps - step - 1)
                _say(console, f"step {step + 1}/{cfg.steps}  loss {row['loss']:.4f}  gnorm {row['grad_norm']:.3f}  "
                              f"lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tok/s  MFU {row['mfu']:.1%}  "
                              f"ETA {eta:,.0f}s")
            summary.update(step=step + 1, loss=row["loss"])
            done = step + 1 == cfg.steps
            if stop["flag"] or done or (cfg.checkpoint.every and (step + 1) % cfg.checkpoint.every == 0):
                save(step + 1)
            if stop["flag"]:
                _say(console, f"SIGTERM: saved step {step + 1}, exiting")
                summary["interrupted"] = True
                break
    finally:
        mngr.wait_until_finished()
        mngr.close()
        writer.close()
        signal.signal(signal.SIGTERM, previous)
    summary["skipped_updates"] = int(state["skipped"])
    if jax.process_index() == 0:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _say(console, text: str) -> None:
    if jax.process_index() != 0:
        return
    if console is not None:
        console.print(text)
    else:
        print(text, file=sys.stderr, flush=True)
