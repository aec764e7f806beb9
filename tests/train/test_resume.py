"""Checkpoints: a SIGKILLed run resumes bit-identically; a checkpoint restores onto another mesh."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from puyu_jax.config import load_config
from puyu_jax.train.config import TrainConfig
from puyu_jax.train.loop import train

REPO = Path(__file__).resolve().parents[2]
TINY_RUN = ["model=tiny", "data.seq_len=64", "data.vocab_size=512", "batch_size=8", "steps=40",
            "checkpoint.every=5", "log_every=100", "tensorboard=false", "optimizer.warmup_steps=5"]


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out[row["step"]] = row["loss"]  # a resumed run re-logs steps after its checkpoint
    return out


def _cmd(out_dir, *extra):
    return [sys.executable, "-m", "puyu_jax.cli", "train", str(REPO / "configs/pretrain/tiny-shakespeare.yaml"),
            *TINY_RUN, f"out_dir={out_dir}", *extra]


def _env():
    # a single process, whatever launcher variables the test process itself carries
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PUYU_COORDINATOR", "MEGASCALE_")) and k != "TPU_WORKER_HOSTNAMES"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    return env


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path):
    subprocess.run(_cmd(tmp_path / "ref"), check=True, env=_env(), capture_output=True)
    ref = _losses(tmp_path / "ref")
    assert len(ref) == 40 and ref[40] < ref[1] - 0.5  # the loss falls

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 17:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    logged = len((run / "metrics.jsonl").read_text().splitlines())
    assert logged < 40, "the run finished before it could be killed"

    subprocess.run(_cmd(run, "--resume"), check=True, env=_env(), capture_output=True)
    got = _losses(run)
    assert got == ref  # every step's loss, bit for bit


def test_sigterm_saves_and_exits(tmp_path):
    run = tmp_path / "term"
    proc = subprocess.Popen(_cmd(run, "steps=400"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    steps = len(_losses(run))
    assert steps < 400 and "SIGTERM: saved step" in err
    assert (run / "checkpoints" / str(steps)).is_dir()


def test_restore_onto_a_smaller_mesh(tmp_path):
    base = load_config(TrainConfig, REPO / "configs/pretrain/tiny-shakespeare.yaml",
                       TINY_RUN + ["steps=6", "checkpoint.every=3", "checkpoint.async_save=false",
                                   "parallel.preset=zero3", "parallel.data=1", "parallel.fsdp=8"])
    ref = train(load_config(TrainConfig, base, [f"out_dir={tmp_path / 'ref'}"]))
    half = load_config(TrainConfig, base, [f"out_dir={tmp_path / 'r'}", "steps=3"])
    train(half)
    resumed_cfg = load_config(TrainConfig, half, ["steps=6", "parallel.fsdp=4"])
    out = train(resumed_cfg, resume=True, devices=jax.devices()[:4])
    assert out["start_step"] == 3
    a, b = _losses(tmp_path / "ref"), _losses(tmp_path / "r")
    np.testing.assert_allclose([b[s] for s in range(1, 7)], [a[s] for s in range(1, 7)], atol=1e-5)
    assert ref["step"] == out["step"] == 6


def _tiny(out_dir, *extra):
    return load_config(TrainConfig, REPO / "configs/pretrain/tiny-shakespeare.yaml",
                       TINY_RUN + ["steps=6", "checkpoint.every=3", "checkpoint.keep=3", "checkpoint.async_save=false",
                                   f"out_dir={out_dir}", *extra])


def _tree(path: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


def test_resume_with_another_model_shape_fails_before_touching_anything(tmp_path, monkeypatch, capsys):
    from puyu_jax import cli
    from puyu_jax.config import ConfigError
    from puyu_jax.train import loop

    run = tmp_path / "run"
    train(_tiny(run, "steps=3"))
    before = _tree(run)
    saved = (run / "config.yaml").read_bytes(), (run / "config.hash").read_bytes()

    def no_checkpoint_access(*a, **k):
        raise AssertionError("the checkpoint manager must not be opened")

    monkeypatch.setattr(loop, "_checkpoint_manager", no_checkpoint_access)
    with pytest.raises(ConfigError) as e:
        train(_tiny(run, "model.num_layers=3", "model.hidden_size=96"), resume=True)
    msg = str(e.value)
    assert "\n" not in msg and "model.hidden_size: 64 -> 96" in msg and "model.num_layers: 2 -> 3" in msg, msg
    assert "steps" not in msg  # only the keys the checkpoint cannot take
    capsys.readouterr()
    rc = cli.main(["train", str(REPO / "configs/pretrain/tiny-shakespeare.yaml"), *TINY_RUN, f"out_dir={run}",
                   "model.vocab_size=1024", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "model.vocab_size: 512 -> 1024" in err, err
    assert ((run / "config.yaml").read_bytes(), (run / "config.hash").read_bytes()) == saved
    assert _tree(run) == before  # nothing in the run directory was written


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, capsys):
    from puyu_jax.config import ConfigError

    run = tmp_path / "run"
    train(_tiny(run))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["3", "6"]
    first = _losses(run)
    # a disk that lost the tail of the latest checkpoint's largest file
    big = max((p for p in (run / "checkpoints" / "6").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    capsys.readouterr()
    out = train(_tiny(run, "steps=8"), resume=True)
    err = capsys.readouterr().err
    assert out["start_step"] == 3 and out["step"] == 8
    assert "checkpoint 6" in err and "unreadable" in err and "steps 4-6" in err and "lost" in err, err
    assert (run / "checkpoints.damaged" / "6").is_dir()  # kept for inspection, out of the manager's way
    again = _losses(run)  # steps 4-6 re-logged by the resumed run
    assert [again[s] for s in range(1, 7)] == [first[s] for s in range(1, 7)]  # trained again, bit for bit
    # every checkpoint damaged: a clear error naming them, not a crash deep in orbax
    steps = sorted((p.name for p in (run / "checkpoints").iterdir()), key=int)
    assert steps == ["3", "6", "8"]
    for step in steps:
        (run / "checkpoints" / step / "data" / "metadata").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"no checkpoint .* reads back whole: step 8: .*; step 6: .*; step 3: "):
        train(_tiny(run, "steps=9"), resume=True)


def test_finetune_resume_names_the_base_model_and_lora_shape(tmp_path):
    from puyu_jax.config import ConfigError, save_run_config
    from puyu_jax.finetune.config import FinetuneConfig
    from puyu_jax.train.loop import check_resume_config

    cfg = load_config(FinetuneConfig, None, [f"out_dir={tmp_path}"])
    save_run_config(cfg, tmp_path)
    check_resume_config(tmp_path, load_config(FinetuneConfig, cfg, ["steps=99", "optimizer.lr=1e-5"]))  # fine
    with pytest.raises(ConfigError, match=r"lora\.rank: 8 -> 16.*model: 'smollm2' -> 'other'|model: 'smollm2' -> 'other'.*lora\.rank: 8 -> 16"):
        check_resume_config(tmp_path, load_config(FinetuneConfig, cfg, ["model=other", "lora.rank=16"]))
